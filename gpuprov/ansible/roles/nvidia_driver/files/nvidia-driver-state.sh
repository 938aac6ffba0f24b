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
echo "== sig-key"
# The module's signing key as kmod reads it from the PKCS#7 signature (kmod-project/kmod,
# libkmod-signature): the serial number of the certificate that signed it, "65:FB:AA:...", since
# sign-file names the signer by issuer and serial number (with -k, by key id: kmod reports none).
# Checked with Debian 12's modinfo (kmod 30) on a module signed as sign-file signs.
[ -n "$dkms_name" ] && modinfo -k "$kernel" -F sig_key "$dkms_name" 2>/dev/null
# The serial numbers of the MOK certificates, one a line; "none" when mokutil answers with no
# certificate; nothing when mokutil is missing or fails (unknown). mokutil prints each key as
# "[key N]", "SHA1 Fingerprint: ..." and OpenSSL's X509_print_fp text, where a long serial is
# on the line after "Serial Number:" ("65:fb:aa:...") and one that fits 64 bits on the same
# line ("Serial Number: 4096 (0x1000)"); a variable that does not exist prints nothing in 0.6.0
# ("MokNew is empty" in older ones). Sources: lcp/mokutil src/mokutil.c (list_keys_in_var,
# print_x509), and Debian 12's mokutil 0.6.0-2 run over a stand-in efivarfs (EFIVARFS_PATH):
# tests/unit/fixtures/nvidia_driver/mokutil-list-*.txt.
mok_serials() {
    command -v mokutil >/dev/null || return 0
    listing=$(mokutil "$1" 2>/dev/null) || return 0
    printf "%s\n" "$listing" | awk '
        /Certificate:/ { certs++ }
        /Serial Number:/ {
            serial = $0
            sub(/.*Serial Number:[ \t]*/, "", serial)
            if (serial == "") getline serial
            else { sub(/.*\(-?0x/, "", serial); sub(/\).*/, "", serial) }
            sub(/\(Negative\)/, "", serial)
            gsub(/[ \t]/, "", serial)
            if (serial != "") { print serial; found++ }
        }
        END { if (!certs && !found) print "none" }'
}
echo "== mok-enrolled"
mok_serials --list-enrolled
echo "== mok-pending"
mok_serials --list-new
echo "== nvidia-smi"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1
    echo "exit $?"
fi
exit 0
