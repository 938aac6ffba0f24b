#!/bin/sh
# gpuprov nvidia_driver: what the host says about its NVIDIA driver, in sections the role's
# filter (filter_plugins/nvidia_driver.py) reads. Reads only; changes nothing.
# Usage: nvidia-driver-state.sh KERNEL DRIVER_VERSION PACKAGE...
set -u
kernel=$1 version=$2
shift 2
echo "== dkms"
dkms_status=$(dkms status -k "$kernel" 2>&1)
echo "$dkms_status"
# The DKMS name of the driver's module (nvidia-current-open, nvidia-tesla-535, ...).
dkms_name=$(echo "$dkms_status" | sed -n "s#^\([^/, ]*\)[/,] *$version, .*#\1#p" | head -n 1)
echo "== packages"
dpkg-query --show --showformat='${Package} ${Version} ${db:Status-Abbrev}\n' "$@" 2>/dev/null
echo "== holds"
apt-mark showhold
echo "== cards"
for device in /sys/bus/pci/devices/*; do
    [ "$(cat "$device/vendor")" = 0x10de ] || continue
    driver=$(readlink "$device/driver" 2>/dev/null || true)
    echo "${device##*/} $(cat "$device/device") ${driver##*/}"
done
echo "== loaded"
cat /sys/module/nvidia/version 2>/dev/null
echo "== no-autoinstall"
[ -e /etc/dkms/no-autoinstall ] && echo present
echo "== secure-boot"
# The EFI variable's last byte: 1 on, 0 off; nothing without UEFI.
od -An -tu1 /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c \
    2>/dev/null | awk '{print $NF}'
echo "== nouveau-blacklist"
modprobe --showconfig 2>/dev/null | grep -x 'blacklist nouveau'
echo "== signer"
[ -n "$dkms_name" ] && modinfo -k "$kernel" -F signer "$dkms_name" 2>&1
echo "== nvidia-smi"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1
    echo "exit $?"
fi
exit 0
