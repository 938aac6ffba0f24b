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

# Under software emulation every fork costs about 0.1 s, and across a fleet every endpoint's
# CPU counts: what a shell builtin can do, a builtin does.

dir_name() { # LINK: set _path to the directory LINK resolves to, _name to its name; false if none
    # `cd -P` resolves the link without forking, unlike "$(readlink -f LINK)".
    _path= _name=
    cd -P "$1" 2>/dev/null || return 1
    _path=$PWD
    _name=${PWD##*/}
    cd / || :
}

list_dir() { # NAME DIR: a section NAME with the names in DIR, as `ls -1` prints them
    header "$1"
    for _entry in "$2"/*; do
        [ -e "$_entry" ] && echo "${_entry##*/}"
    done
}

any_entry() { # DIR: true when DIR has an entry
    for _entry in "$1"/*; do
        [ -e "$_entry" ] && return 0
    done
    return 1
}

# A subshell body, so that each level of the recursion keeps its own _dev and _found (an LVM
# root, dm-0 over sda2, used to list sda twice).
block_parents() ( # NAME: the whole disks under block device NAME (partitions, dm, md resolved)
    dir_name "/sys/class/block/$1" || return 0
    _dev=$_path
    if [ -f "$_dev/partition" ]; then
        _parent=${_dev%/*}
        block_parents "${_parent##*/}"
        return 0
    fi
    _found=
    for _slave in "$_dev"/slaves/*; do
        [ -e "$_slave" ] || continue
        _found=1
        block_parents "${_slave##*/}"
    done
    [ -n "$_found" ] || echo "${_dev##*/}"
)

net_lowers() { # IF: the interfaces with a device under IF (bridge ports, bond slaves, VLAN parents)
    if [ -e "/sys/class/net/$1/device" ]; then
        echo "$1"
        return 0
    fi
    for _lower in /sys/class/net/"$1"/lower_* /sys/class/net/"$1"/brif/*; do
        [ -e "$_lower" ] || continue
        _lname=${_lower##*/}
        net_lowers "${_lname#lower_}"
    done
}

header probe
echo "gpuprov-probe 1"
_uid=
while read -r _key _real _effective _rest; do  # Uid: real effective saved file-system
    if [ "$_key" = Uid: ]; then _uid=$_effective; break; fi
done 2>/dev/null </proc/self/status
[ -n "$_uid" ] || _uid=$(id -u 2>/dev/null)
echo "uid $_uid"

header cpu_vendor
while read -r _line; do
    case $_line in vendor_id*) echo "$_line"; break ;; esac
done 2>/dev/null </proc/cpuinfo

_kernel=
read -r _kernel 2>/dev/null </proc/sys/kernel/osrelease
if [ -n "$_kernel" ]; then
    header kernel
    echo "$_kernel"
else
    run kernel uname -r
    _kernel=$(uname -r 2>/dev/null)
fi

header cmdline
_cmdline=
read -r _cmdline 2>/dev/null </proc/cmdline && echo "$_cmdline"

header firmware
if [ -d /sys/firmware/efi ]; then echo uefi; else echo bios; fi

# EFI_GLOBAL_VARIABLE's GUID (UEFI spec), the vendor of SecureBoot, SetupMode, PK, ...
_sb=/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c
if [ -r "$_sb" ]; then
    # The first 4 bytes are the variable's attributes; the 5th is the value (1 = enabled).
    header secure_boot
    od -An -t u1 -j 4 -N 1 "$_sb" 2>/dev/null | tr -d ' '
elif any_entry /sys/firmware/efi/efivars; then
    # UEFI variables are readable but there is none: firmware without Secure Boot support.
    header secure_boot
    echo "no SecureBoot variable"
else
    header secure_boot absent
fi

if [ -d /sys/firmware/acpi/tables ]; then
    list_dir acpi_tables /sys/firmware/acpi/tables
else
    header acpi_tables absent
fi

header iommu_groups
for _d in /sys/kernel/iommu_groups/*/devices/*; do
    [ -e "$_d" ] && echo "$_d"
done

if [ -d /sys/class/iommu ]; then list_dir iommu_class /sys/class/iommu; else header iommu_class absent; fi

_config=/boot/config-$_kernel
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
    case $_log in
        *[Rr][Ee][Mm][Aa][Pp][Pp][Ii][Nn][Gg]*) ;;
        *) journalctl -k -b 0 -o cat --no-pager 2>/dev/null | grep -E -i 'remapping' ;;
    esac
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
    _root_fs=$(findmnt -n -r -o SOURCE,FSTYPE / 2>/dev/null)
else
    _root_fs=$(awk '$2 == "/" { print $1, $3 }' /proc/mounts 2>/dev/null | tail -n 1)
fi
[ -z "$_root_fs" ] || echo "$_root_fs"

# `DISK PATH` for each whole disk under the root file system: PATH is its device in sysfs,
# whose PCI addresses are the controller and the bridges above it.
header root_disk
_root_src= _root_type=
while read -r _source _type; do
    _root_src="$_root_src $_source"
    _root_type=$_type
done <<ROOT_FS
$_root_fs
ROOT_FS
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
    for _disk in $(block_parents "${_node##*/}"); do
        dir_name "/sys/class/block/$_disk/device"
        echo "$_disk $_path"
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
            dir_name "/sys/class/net/$_nic/device"
            echo "device $_nic $_path"
        done
    fi
fi

if [ -d /dev/vfio ]; then list_dir dev_vfio /dev/vfio; else header dev_vfio absent; fi

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
