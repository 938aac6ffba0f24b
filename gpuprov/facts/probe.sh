# gpuprov host probe: read-only, POSIX sh, run as root through one SSH session (`sh -s`).
#
# Prints one section per fact: a header line `### NAME` (or `### NAME PATH` for files), then the
# raw output of the command. A header may carry a status in brackets: `[absent]` (no such file
# or directory), `[no command]` (the program is not installed), `[exit N]` (it failed). Every
# probe tolerates what is missing; the script itself always exits 0. Parsed by
# gpuprov.facts.sections; change both together.

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
LC_ALL=C
SYSTEMD_PAGER=
SYSTEMD_COLORS=0
export PATH LC_ALL SYSTEMD_PAGER SYSTEMD_COLORS

header() { # NAME [STATUS]
    if [ -n "$2" ]; then printf '### %s [%s]\n' "$1" "$2"; else printf '### %s\n' "$1"; fi
}

run() { # NAME COMMAND [ARG...]: the command's stdout and stderr, and its failure if any
    _name=$1
    shift
    if ! command -v "$1" >/dev/null 2>&1; then
        header "$_name" "no command"
        return 0
    fi
    _out=$("$@" 2>&1 </dev/null)
    _rc=$?
    if [ "$_rc" -eq 0 ]; then header "$_name"; else header "$_name" "exit $_rc"; fi
    if [ -n "$_out" ]; then printf '%s\n' "$_out"; fi
    return 0
}

show_file() { # PATH: a section `file PATH` with the file's content
    if [ -f "$1" ]; then
        header "file $1"
        cat "$1" 2>/dev/null
        # Keep the next header on its own line when the file lacks a final newline.
        if [ -n "$(tail -c 1 "$1" 2>/dev/null)" ]; then echo; fi
    else
        header "file $1" absent
    fi
}

dir_name() { # LINK: set _name to the name of the directory LINK resolves to; false if none
    # `cd -P` resolves the link without forking, unlike basename "$(readlink -f LINK)".
    _name=
    cd -P "$1" 2>/dev/null || return 1
    _name=${PWD##*/}
    cd / || :
}

# A subshell body, so that each level of the recursion keeps its own _dev and _found (an LVM
# root, dm-0 over sda2, used to list sda twice).
block_parents() ( # NAME: the whole disks under block device NAME (partitions, dm, md resolved)
    _dev=$(readlink -f "/sys/class/block/$1" 2>/dev/null) || return 0
    [ -e "$_dev" ] || return 0
    if [ -f "$_dev/partition" ]; then
        block_parents "$(basename "$(dirname "$_dev")")"
        return 0
    fi
    _found=
    for _slave in "$_dev"/slaves/*; do
        [ -e "$_slave" ] || continue
        _found=1
        block_parents "$(basename "$_slave")"
    done
    [ -n "$_found" ] || basename "$_dev"
)

net_lowers() { # IF: the interfaces with a device under IF (bridge ports, bond slaves, VLAN parents)
    if [ -e "/sys/class/net/$1/device" ]; then
        echo "$1"
        return 0
    fi
    for _lower in /sys/class/net/"$1"/lower_* /sys/class/net/"$1"/brif/*; do
        [ -e "$_lower" ] || continue
        _lname=$(basename "$_lower")
        net_lowers "${_lname#lower_}"
    done
}

header probe
echo "gpuprov-probe 1"
echo "uid $(id -u 2>/dev/null)"

header cpu_vendor
grep -m1 '^vendor_id' /proc/cpuinfo 2>/dev/null

run kernel uname -r

header cmdline
cat /proc/cmdline 2>/dev/null

header firmware
if [ -d /sys/firmware/efi ]; then echo uefi; else echo bios; fi

# EFI_GLOBAL_VARIABLE's GUID (UEFI spec), the vendor of SecureBoot, SetupMode, PK, ...
_sb=/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c
if [ -r "$_sb" ]; then
    # The first 4 bytes are the variable's attributes; the 5th is the value (1 = enabled).
    header secure_boot
    od -An -t u1 -j 4 -N 1 "$_sb" 2>/dev/null | tr -d ' '
elif [ -n "$(find /sys/firmware/efi/efivars -mindepth 1 -maxdepth 1 2>/dev/null | head -n 1)" ]; then
    # UEFI variables are readable but there is none: firmware without Secure Boot support.
    header secure_boot
    echo "no SecureBoot variable"
else
    header secure_boot absent
fi

if [ -d /sys/firmware/acpi/tables ]; then
    run acpi_tables ls -1 /sys/firmware/acpi/tables
else
    header acpi_tables absent
fi

header iommu_groups
for _d in /sys/kernel/iommu_groups/*/devices/*; do
    [ -e "$_d" ] && echo "$_d"
done

if [ -d /sys/class/iommu ]; then run iommu_class ls -1 /sys/class/iommu; else header iommu_class absent; fi

_config=/boot/config-$(uname -r 2>/dev/null)
if [ -f "$_config" ]; then
    header "kernel_config $_config"
    grep -E '^(# )?CONFIG_(INTEL_IOMMU|AMD_IOMMU|IRQ_REMAP)' "$_config" 2>/dev/null
else
    header "kernel_config $_config" absent
fi

# The ring buffer of a long-running host may have lost the boot messages; the journal keeps them.
_dmesg_re='DMAR|AMD-Vi|IOMMU|remapping'
if _log=$(dmesg 2>/dev/null) && [ -n "$_log" ]; then
    header dmesg
    printf '%s\n' "$_log" | grep -E -i "$_dmesg_re"
    if ! printf '%s\n' "$_log" | grep -q -E -i 'remapping'; then
        journalctl -k -b 0 -o cat --no-pager 2>/dev/null | grep -E -i 'remapping'
    fi
elif command -v journalctl >/dev/null 2>&1; then
    header dmesg
    journalctl -k -b 0 -o cat --no-pager 2>/dev/null | grep -E -i "$_dmesg_re"
else
    header dmesg "no command"
fi

run lspci lspci -Dnnk

# Every PCI function as the kernel sees it, independent of pciutils. Only shell builtins in this
# loop: under software emulation every fork costs about 0.1 s, and a host has dozens of functions.
header pci_sysfs
for _p in /sys/bus/pci/devices/*; do
    [ -e "$_p" ] || continue
    _class= _vendor= _device=
    read -r _class 2>/dev/null <"$_p/class"
    read -r _vendor 2>/dev/null <"$_p/vendor"
    read -r _device 2>/dev/null <"$_p/device"
    _line="${_p##*/} class=$_class vendor=$_vendor device=$_device"
    if dir_name "$_p/driver"; then _line="$_line driver=$_name"; fi
    if dir_name "$_p/iommu_group"; then _line="$_line iommu_group=$_name"; fi
    if [ -f "$_p/boot_vga" ]; then
        _boot_vga=
        read -r _boot_vga 2>/dev/null <"$_p/boot_vga"
        _line="$_line boot_vga=$_boot_vga"
    fi
    echo "$_line"
done

show_file /etc/default/grub
for _f in /etc/default/grub.d/*.cfg; do
    [ -e "$_f" ] && show_file "$_f"
done
show_file /etc/kernel/cmdline

run proxmox_boot_tool proxmox-boot-tool status
run bootctl_is_installed bootctl is-installed
run bootctl_status bootctl status --no-pager

header root_fs
if command -v findmnt >/dev/null 2>&1; then
    findmnt -n -r -o SOURCE,FSTYPE / 2>/dev/null
else
    awk '$2 == "/" { print $1, $3 }' /proc/mounts 2>/dev/null | tail -n 1
fi

# `DISK PATH` for each whole disk under the root file system: PATH is its device in sysfs,
# whose PCI addresses are the controller and the bridges above it.
header root_disk
_root_src=$(findmnt -n -r -o SOURCE / 2>/dev/null || awk '$2 == "/" { print $1 }' /proc/mounts)
_root_type=$(findmnt -n -r -o FSTYPE / 2>/dev/null || awk '$2 == "/" { print $3 }' /proc/mounts)
_root_devs=
if [ "$_root_type" = zfs ]; then
    _root_devs=$(zpool list -v -H -P "${_root_src%%/*}" 2>/dev/null | awk '$1 ~ /^\/dev\// { print $1 }')
elif [ "$_root_type" = btrfs ] && command -v btrfs >/dev/null 2>&1; then
    _root_devs=$(btrfs filesystem show / 2>/dev/null | awk '$1 == "devid" { print $NF }')
else
    _root_devs=$_root_src
fi
for _src in $_root_devs; do
    _src=${_src%%\[*}  # btrfs: /dev/sda2[/@rootfs]
    case "$_src" in /dev/*) ;; *) continue ;; esac
    _node=$(readlink -f "$_src" 2>/dev/null) || continue
    for _disk in $(block_parents "$(basename "$_node")"); do
        echo "$_disk $(readlink -f "/sys/class/block/$_disk/device" 2>/dev/null)"
    done
done

# `connection ...`, `interface IF`, then `device IF PATH` for the NIC(s) that carry it.
header mgmt_nic
if [ -n "$SSH_CONNECTION" ]; then
    echo "connection $SSH_CONNECTION"
    # shellcheck disable=SC2086
    set -- $SSH_CONNECTION
    _client=${1#::ffff:}
    _server=${3#::ffff:}
    _if=$(ip -o addr show 2>/dev/null | awk -v a="$_server" '{ split($4, p, "/"); if (p[1] == a) { print $2; exit } }')
    if [ -z "$_if" ] || [ "$_if" = lo ]; then
        _if=$(ip route get "$_client" 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')
    fi
    _if=${_if%%@*}
    if [ -n "$_if" ]; then
        echo "interface $_if"
        for _nic in $(net_lowers "$_if"); do
            echo "device $_nic $(readlink -f "/sys/class/net/$_nic/device" 2>/dev/null)"
        done
    fi
fi

if [ -d /dev/vfio ]; then run dev_vfio ls -1 /dev/vfio; else header dev_vfio absent; fi

# `NAME loaded|builtin|absent` for each vfio module.
header vfio_modules
for _m in vfio vfio_pci vfio_iommu_type1; do
    if [ -e "/sys/module/$_m/initstate" ]; then
        echo "$_m loaded"
    elif [ -d "/sys/module/$_m" ]; then
        echo "$_m builtin"
    else
        echo "$_m absent"
    fi
done

exit 0
