#!/bin/sh
# STAND-IN for NVIDIA's nv-fabricmanager @VERSION@ (gpuprov tests): it does only what the real
# daemon does before it touches an NVSwitch, and never manages a fabric.
case "${1:-}" in
    -v|--version) echo "Fabric Manager version is : @VERSION@"; exit 0 ;;
esac
if [ -z "$(ls -A /proc/driver/nvidia-nvswitch/devices 2>/dev/null)" ]; then
    echo "request to query NVSwitch device information from NVSwitch driver failed with" \
         "error:WARNING Nothing to do [NV_WARN_NOTHING_TO_DO]" >&2
    exit 1
fi
driver=$(sed -n 's/.*Kernel Module[^0-9]*\([0-9][0-9.]*\).*/\1/p' \
    /proc/driver/nvidia/version 2>/dev/null)
if [ "$driver" != "@VERSION@" ]; then
    echo "fabric manager NVIDIA GPU driver interface version @VERSION@ don't match with driver" \
         "version $driver. Please update with matching NVIDIA driver package." >&2
    exit 1
fi
echo "stand-in nv-fabricmanager: there is no real fabric to manage here" >&2
exit 1
