#!/bin/sh
# gpuprov container_toolkit: what the host says about its container runtimes, the toolkit and
# the GPUs, in sections the role's filter (filter_plugins/container_toolkit.py) reads, each
# runtime read through itself. Reads only; changes nothing.
# Usage: container-toolkit-state.sh PACKAGE...
set -u
echo "== runtimes"
# "<runtime> <ActiveState>" for each runtime installed.
for runtime in docker:dockerd containerd:containerd crio:crio; do
    command -v "${runtime#*:}" >/dev/null || continue
    unit=${runtime%%:*}
    echo "$unit $(systemctl show "$unit.service" --property=ActiveState --value 2>/dev/null)"
done
echo "== docker"
# The runtimes the daemon itself lists, and its default.
if command -v docker >/dev/null; then
    docker info --format '{{json .Runtimes}}' 2>&1 | head -n 3
    docker info --format 'default {{.DefaultRuntime}}' 2>/dev/null
fi
echo "== containerd"
# The NVIDIA runtime's tables, and the CRI default, as the daemon's merged configuration has them.
if command -v containerd >/dev/null; then
    containerd config dump 2>&1 | awk '
        /^ *\[/ { show = ($0 ~ /runtimes\.nvidia[].]/) }
        show || /default_runtime_name/ { print }'
fi
echo "== crio"
if command -v crio >/dev/null; then
    crio config 2>/dev/null | awk '
        /^ *\[/ { show = ($0 ~ /runtimes\.nvidia\]/) }
        show || /^ *default_runtime *=/ { print }'
fi
echo "== packages"
dpkg-query --show --showformat='${Package} ${Version} ${db:Status-Abbrev}\n' "$@" 2>/dev/null
echo "== holds"
apt-mark showhold
echo "== gpus"
if command -v nvidia-smi >/dev/null; then
    gpus=$(nvidia-smi --list-gpus 2>&1)
    code=$?
    printf '%s\n' "$gpus" | head -n 16
    echo "exit $code"
fi
echo "== cdi"
[ -s /etc/cdi/nvidia.yaml ] && echo /etc/cdi/nvidia.yaml
exit 0
