#!/bin/sh
# gpuprov fabricmanager: what the host says about NVSwitch, the driver and fabricmanager, in
# sections the role's filter (filter_plugins/fabricmanager.py) reads. Reads only; changes nothing.
# Usage: fabricmanager-state.sh KERNEL CONFIG
set -u
kernel=$1 config=$2
echo "== nvswitch"
# The driver lists one entry per NVSwitch it drives; empty or absent without any.
ls -A /proc/driver/nvidia-nvswitch/devices 2>/dev/null
echo "== loaded"
cat /sys/module/nvidia/version 2>/dev/null
echo "== module"
# The version of the nvidia module this kernel would load. Debian renames it (its modprobe
# configuration has "install nvidia modprobe -i nvidia-current-open"); elsewhere it is nvidia.
name=$(modprobe --showconfig 2>/dev/null \
    | sed -n 's/^install nvidia modprobe -i \([^ ]*\).*/\1/p' | head -n 1)
modinfo -k "$kernel" -F version "${name:-nvidia}" 2>/dev/null | head -n 1
echo "== packages"
# Either naming (nvidia-fabricmanager-535, or nvidia-fabricmanager from 580 on), and NVLSM.
dpkg-query --show --showformat='${Package} ${Version} ${db:Status-Abbrev}\n' \
    'nvidia-fabricmanager*' 'libnvidia-nscq*' nvlsm 2>/dev/null
echo "== holds"
apt-mark showhold
echo "== service"
systemctl show nvidia-fabricmanager.service \
    --property=LoadState,ActiveState,SubState,UnitFileState,ConditionResult,Result 2>/dev/null
echo "== journal"
if [ "$(systemctl show nvidia-fabricmanager.service --property=Result --value 2>/dev/null)" != success ]; then
    journalctl --unit=nvidia-fabricmanager.service --lines=3 --no-pager --output=cat 2>/dev/null
fi
echo "== config"
[ -r "$config" ] && grep -E '^[[:space:]]*FABRIC_MODE[[:space:]]*=' "$config"
echo "== virt"
systemd-detect-virt 2>/dev/null || true
echo "== fabric"
if command -v nvidia-smi >/dev/null; then
    smi=$(nvidia-smi -q 2>&1)
    code=$?
    # The GPU headers and each Fabric block's State and Status; nvidia-smi's words on failure.
    if [ $code -eq 0 ]; then
        printf '%s\n' "$smi" | awk '/^GPU [0-9A-Fa-f]/ {print; next}
                                    /^ +Fabric$/ {print; n = 2; next}
                                    n > 0 {print; n--}'
    else
        printf '%s\n' "$smi" | head -n 3
    fi
    echo "exit $code"
fi
exit 0
