#!/bin/sh
# gpuprov guest probe: what `gpuprov guest inspect` and `guest setup` read first from a GPU node
# or a passthrough VM: the distro, the kernel, the cards and the NVIDIA packages. The roles' own
# state scripts (nvidia_driver, fabricmanager, container_toolkit) follow in the same SSH
# connection, with what this tells. Reads only; changes nothing. Sections as probe.sh prints
# them (gpuprov/facts/sections.py).
set -u
echo "### os_release"
cat /etc/os-release 2>/dev/null
echo "### kernel"
uname -r
echo "### cards"
# "<address> <vendor>:<device> <class> <driver>" for each display controller (class 03) and
# each NVIDIA device (NVSwitches are bridges, class 0680).
for device in /sys/bus/pci/devices/*; do
    [ -e "$device/class" ] || continue
    class=$(cat "$device/class") vendor=$(cat "$device/vendor")
    case "$class" in
        0x03*) ;;
        *) [ "$vendor" = 0x10de ] || continue ;;
    esac
    driver=$(readlink "$device/driver" 2>/dev/null)
    echo "${device##*/} ${vendor#0x}:$(sed 's/^0x//' "$device/device") ${class#0x} ${driver##*/}"
done
echo "### nvidia_packages"
# Every NVIDIA package dpkg knows, with its state ("ii" or "hi": installed).
if command -v dpkg-query >/dev/null; then
    dpkg-query --show --showformat='${Package} ${Version} ${db:Status-Abbrev}\n' \
        'nvidia-*' 'libnvidia-*' 'libcuda1*' 'firmware-nvidia-*' nvlsm 2>/dev/null
fi
echo "### run_installer"
# NVIDIA's .run installer leaves its uninstaller; packages must not be laid over its files.
[ -e /usr/bin/nvidia-uninstall ] && echo /usr/bin/nvidia-uninstall
exit 0
