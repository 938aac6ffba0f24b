"""Which boot loader starts this host's kernel, decided from several signals, never one file.

A host often carries traces of more than one (a Debian host moved to systemd-boot keeps
/etc/default/grub; Proxmox VE on ZFS has GRUB's files but boots through proxmox-boot-tool), so
the decision weighs, in order: proxmox-boot-tool's own record of the ESPs it manages, the boot
loader the firmware reports as running (``bootctl status``), ``bootctl is-installed``, then the
configuration files. The signals that decided are returned with the decision so ``host
inspect`` can show them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gpuprov.ansible.roles.iommu.filter_plugins import kernel_cmdline
from gpuprov.facts.sections import ProbeOutput, Section

GRUB = "grub"
SYSTEMD_BOOT = "systemd-boot"
PROXMOX_BOOT_TOOL = "proxmox-boot-tool"
UNKNOWN = "unknown"

GRUB_DEFAULT_FILE = "/etc/default/grub"
GRUB_DEFAULT_DIR = "/etc/default/grub.d"
KERNEL_CMDLINE_FILE = "/etc/kernel/cmdline"


@dataclass(frozen=True)
class Signal:
    name: str
    value: str
    decisive: bool = False

    def to_json(self) -> dict:
        return {"name": self.name, "value": self.value, "decisive": self.decisive}


@dataclass(frozen=True)
class Bootloader:
    """``kind`` is grub, systemd-boot, proxmox-boot-tool or unknown; ``mode`` is
    proxmox-boot-tool's (uefi: systemd-boot on the ESPs, grub: GRUB on the ESPs)."""

    kind: str
    mode: str | None
    signals: tuple[Signal, ...]

    @property
    def decided_by(self) -> tuple[Signal, ...]:
        return tuple(s for s in self.signals if s.decisive)

    @property
    def cmdline_source(self) -> str | None:
        """The file the kernel command line is configured in for this boot loader."""
        if self.kind == GRUB or (self.kind == PROXMOX_BOOT_TOOL and self.mode == "grub"):
            return GRUB_DEFAULT_FILE
        if self.kind in (SYSTEMD_BOOT, PROXMOX_BOOT_TOOL):
            return KERNEL_CMDLINE_FILE
        return None

    def __str__(self) -> str:
        return f"{self.kind} ({self.mode})" if self.mode else self.kind

    def to_json(self) -> dict:
        return {"kind": self.kind, "mode": self.mode, "cmdline_source": self.cmdline_source,
                "signals": [s.to_json() for s in self.signals]}


@dataclass(frozen=True)
class ProxmoxBootTool:
    installed: bool
    esp_modes: tuple[str, ...]  # one per configured ESP: "uefi" or "grub"
    booted_with: str | None  # "uefi" or "legacy", as it reports


_PBT_ESP = re.compile(r"is configured with: (?P<mode>uefi|grub)\b")
_PBT_BOOTED = re.compile(r"System currently booted with (?P<mode>\w+)")


def parse_proxmox_boot_tool(section: Section) -> ProxmoxBootTool:
    """``proxmox-boot-tool status``: which ESPs it keeps in sync, and in which mode."""
    if not section.present:
        return ProxmoxBootTool(False, (), None)
    modes = tuple(m["mode"] for line in section.lines if (m := _PBT_ESP.search(line)))
    booted = next((m["mode"] for line in section.lines if (m := _PBT_BOOTED.search(line))), None)
    return ProxmoxBootTool(True, modes, booted)


def current_boot_loader(bootctl_status: Section) -> str | None:
    """The ``Product:`` under "Current Boot Loader:" (from the loader's own EFI variables)."""
    in_block = False
    for line in bootctl_status.lines:
        if line.strip() == "Current Boot Loader:":
            in_block = True
        elif in_block and line.strip().startswith("Product:"):
            return line.split(":", 1)[1].strip()
        elif in_block and line and not line[0].isspace():
            return None
    return None


def secure_boot_from_bootctl(bootctl_status: Section) -> bool | None:
    for line in bootctl_status.lines:
        key, _, value = line.strip().partition(":")
        if key == "Secure Boot":
            value = value.strip()
            if value.startswith("enabled"):
                return True
            if value.startswith("disabled"):
                return False
    return None


def grub_cmdline(files: list[Section]) -> str | None:
    """The command line GRUB's normal entries get, from /etc/default/grub and then each
    /etc/default/grub.d/*.cfg (sourced after it, so they win). None when no file is present."""
    if not any(f.present for f in files):
        return None
    return kernel_cmdline.grub_cmdline(kernel_cmdline.grub_cmdline_values(
        "\n".join(line for f in files for line in f.lines)))


def detect_bootloader(probe: ProbeOutput, *, firmware: str, secure_boot: bool | None,
                      root_fstype: str | None, root_source: str | None) -> Bootloader:
    pbt = parse_proxmox_boot_tool(probe.get("proxmox_boot_tool"))
    is_installed = probe.get("bootctl_is_installed")
    status = probe.get("bootctl_status")
    product = current_boot_loader(status)
    grub_present = probe.file(GRUB_DEFAULT_FILE).present
    kernel_cmdline_present = probe.file(KERNEL_CMDLINE_FILE).present
    zfs_root = root_fstype == "zfs"

    if pbt.esp_modes:
        kind, mode = PROXMOX_BOOT_TOOL, pbt.esp_modes[0]
    elif (product or "").lower().startswith("systemd-boot") or (
            firmware == "uefi" and is_installed.exit_code == 0 and not grub_present):
        # systemd-boot runs now, or it is installed and nothing suggests GRUB.
        kind, mode = SYSTEMD_BOOT, None
    elif grub_present or (product and product.lower().startswith("grub")):
        kind, mode = GRUB, None
    else:
        kind, mode = UNKNOWN, None

    if not pbt.installed:
        pbt_value = "not installed"
    elif pbt.esp_modes:
        count = len(pbt.esp_modes)
        pbt_value = f"{count} ESP{'s' if count > 1 else ''} configured with {pbt.esp_modes[0]}"
    else:
        pbt_value = "installed, manages no ESP"
    if not is_installed.present:
        installed_value = "bootctl not installed"
    elif is_installed.lines:
        installed_value = is_installed.text.strip().splitlines()[0]
    else:
        installed_value = "no" if is_installed.exit_code else "yes"
    if not status.present:
        product_value = "bootctl not installed"
    elif product:
        product_value = f"current boot loader: {product}"
    else:
        product_value = "no current boot loader reported"
    root_value = (root_fstype or "unknown") + (f" ({root_source})" if root_source else "")

    # The signals that support the decision, including those that rule the others out.
    decisive = {
        PROXMOX_BOOT_TOOL: {"proxmox-boot-tool status",
                            KERNEL_CMDLINE_FILE if mode == "uefi" else GRUB_DEFAULT_FILE}
                           | ({"root file system"} if zfs_root else set()),
        SYSTEMD_BOOT: {"firmware", "proxmox-boot-tool status"}
                      | ({"bootctl status"} if product else set())
                      | ({"bootctl is-installed"} if is_installed.exit_code == 0 else set())
                      | ({KERNEL_CMDLINE_FILE} if kernel_cmdline_present else set()),
        GRUB: {GRUB_DEFAULT_FILE, "proxmox-boot-tool status", "bootctl status"}
              | ({"firmware"} if firmware == "bios" else set()),
        UNKNOWN: set(),
    }[kind]
    values = [
        ("firmware", firmware),
        ("secure boot", {True: "enabled", False: "disabled", None: "unknown"}[secure_boot]),
        ("proxmox-boot-tool status", pbt_value),
        ("bootctl status", product_value),
        ("bootctl is-installed", installed_value),
        (KERNEL_CMDLINE_FILE, "present" if kernel_cmdline_present else "absent"),
        (GRUB_DEFAULT_FILE, "present" if grub_present else "absent"),
        ("root file system", root_value),
    ]
    signals = [Signal(name, value, name in decisive) for name, value in values]
    return Bootloader(kind, mode, tuple(signals))
