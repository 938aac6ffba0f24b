"""Boot loader detection from several signals; the lab fixtures cover GRUB and systemd-boot on
real hosts, these cover Proxmox's proxmox-boot-tool and the conflicting cases."""

from __future__ import annotations

from gpuprov.facts.bootloader import detect_bootloader
from gpuprov.facts.sections import split_sections

# Shaped like `proxmox-boot-tool status` on Proxmox VE 8 installed on ZFS.
PBT_UEFI = """\
### proxmox_boot_tool
Re-executing '/usr/sbin/proxmox-boot-tool' in new private mount namespace..
System currently booted with uefi
4A3B-21C0 is configured with: uefi (versions: 6.8.12-4-pve, 6.8.4-2-pve)
4A3C-9F11 is configured with: uefi (versions: 6.8.12-4-pve, 6.8.4-2-pve)
"""
PBT_GRUB = """\
### proxmox_boot_tool
Re-executing '/usr/sbin/proxmox-boot-tool' in new private mount namespace..
System currently booted with legacy
5E1D-0A77 is configured with: grub (versions: 6.8.12-4-pve)
"""
PBT_NONE = """\
### proxmox_boot_tool [exit 2]
Re-executing '/usr/sbin/proxmox-boot-tool' in new private mount namespace..
E: /etc/kernel/proxmox-boot-uuids does not exist.
"""
SYSTEMD_BOOT_STATUS = """\
### bootctl_is_installed
yes
### bootctl_status
System:
   Secure Boot: disabled (setup)

Current Boot Loader:
      Product: systemd-boot 252.39-1~deb12u2
     Features: + Boot counting
"""
NO_BOOTCTL = "### bootctl_is_installed [no command]\n### bootctl_status [no command]\n"
GRUB_FILE = '### file /etc/default/grub\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
NO_GRUB_FILE = "### file /etc/default/grub [absent]\n"
KERNEL_CMDLINE = "### file /etc/kernel/cmdline\nroot=ZFS=rpool/ROOT/pve-1 boot=zfs\n"
NO_KERNEL_CMDLINE = "### file /etc/kernel/cmdline [absent]\n"


def detect(*parts: str, firmware="uefi", fstype="ext4", source="/dev/sda2"):
    return detect_bootloader(split_sections("".join(parts)), firmware=firmware,
                             secure_boot=False, root_fstype=fstype, root_source=source)


def test_proxmox_zfs_uefi_is_proxmox_boot_tool_in_uefi_mode():
    # GRUB's files are there too on Proxmox, and systemd-boot runs: the tool's record wins.
    loader = detect(PBT_UEFI, SYSTEMD_BOOT_STATUS, GRUB_FILE, KERNEL_CMDLINE,
                    fstype="zfs", source="rpool/ROOT/pve-1")
    assert (loader.kind, loader.mode) == ("proxmox-boot-tool", "uefi")
    assert loader.cmdline_source == "/etc/kernel/cmdline"
    decided = {s.name: s.value for s in loader.decided_by}
    assert decided == {
        "proxmox-boot-tool status": "2 ESPs configured with uefi",
        "/etc/kernel/cmdline": "present",
        "root file system": "zfs (rpool/ROOT/pve-1)",
    }


def test_proxmox_zfs_legacy_bios_is_proxmox_boot_tool_in_grub_mode():
    loader = detect(PBT_GRUB, NO_BOOTCTL, GRUB_FILE, KERNEL_CMDLINE, firmware="bios",
                    fstype="zfs", source="rpool/ROOT/pve-1")
    assert (loader.kind, loader.mode) == ("proxmox-boot-tool", "grub")
    assert loader.cmdline_source == "/etc/default/grub"
    assert str(loader) == "proxmox-boot-tool (grub)"
    assert {s.name for s in loader.decided_by} == {
        "proxmox-boot-tool status", "/etc/default/grub", "root file system"}


def test_proxmox_on_lvm_with_grub():
    loader = detect(PBT_NONE, NO_BOOTCTL, GRUB_FILE, NO_KERNEL_CMDLINE)
    assert loader.kind == "grub"
    values = {s.name: s.value for s in loader.signals}
    assert values["proxmox-boot-tool status"] == "installed, manages no ESP"


def test_systemd_boot_running_wins_over_a_leftover_grub_file():
    loader = detect(PBT_NONE, SYSTEMD_BOOT_STATUS, GRUB_FILE, NO_KERNEL_CMDLINE)
    assert loader.kind == "systemd-boot"
    assert "bootctl status" in {s.name for s in loader.decided_by}


def test_bios_with_grub():
    loader = detect(NO_BOOTCTL, GRUB_FILE, firmware="bios")
    assert loader.kind == "grub"
    assert {"firmware", "/etc/default/grub"} <= {s.name for s in loader.decided_by}


def test_nothing_to_go_on_is_unknown():
    loader = detect(NO_BOOTCTL, NO_GRUB_FILE, NO_KERNEL_CMDLINE, firmware="bios")
    assert loader.kind == "unknown" and loader.decided_by == ()
    assert loader.cmdline_source is None
    assert len(loader.signals) == 8  # still shown, so the user sees what was looked at
