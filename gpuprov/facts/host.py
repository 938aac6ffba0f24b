"""Everything ``host inspect`` knows about a host, parsed from one run of ``probe.sh``.

Pure: ``parse_host_facts(text)`` takes the probe's whole output and returns ``HostFacts``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gpuprov.facts.bootloader import (
    GRUB_DEFAULT_DIR,
    GRUB_DEFAULT_FILE,
    KERNEL_CMDLINE_FILE,
    Bootloader,
    detect_bootloader,
    grub_cmdline,
    secure_boot_from_bootctl,
)
from gpuprov.facts.cmdline import KernelCmdline
from gpuprov.facts.pci import (
    ADDRESS_IN_TEXT,
    Gpu,
    PciDevice,
    gpus_of,
    merge_devices,
    parse_lspci,
    parse_pci_sysfs,
)
from gpuprov.facts.sections import ProbeOutput, Section, split_sections

_GROUP_PATH = re.compile(r"/sys/kernel/iommu_groups/(?P<group>\d+)/devices/(?P<address>\S+)$")

# dmesg lines that say interrupt remapping is on (Intel: DMAR-IR, AMD: AMD-Vi).
_IR_ENABLED = re.compile(r"DMAR-IR: Enabled IRQ remapping|AMD-Vi: Interrupt remapping enabled")

# Debian's kernel ships INTEL_IOMMU_DEFAULT_ON_INTGPU_OFF=y: on for everything but integrated
# graphics (Debian bug #935270), so for a discrete GPU it is as good as DEFAULT_ON.
_INTEL_DEFAULT_ON = ("CONFIG_INTEL_IOMMU_DEFAULT_ON", "CONFIG_INTEL_IOMMU_DEFAULT_ON_INTGPU_OFF")


@dataclass(frozen=True)
class DevicePath:
    """A device (root disk, NIC) and the PCI functions on its sysfs path, top bridge first."""

    name: str
    sysfs_path: str
    pci_path: tuple[str, ...]

    @property
    def controller(self) -> str | None:
        """The PCI function that is the device's controller: the last one on the path."""
        return self.pci_path[-1] if self.pci_path else None

    def to_json(self) -> dict:
        return {"name": self.name, "sysfs_path": self.sysfs_path, "pci_path": list(self.pci_path),
                "controller": self.controller}


@dataclass(frozen=True)
class ConfiguredCmdline:
    """The kernel command line the boot loader's configuration will give the next boot."""

    source: str | None  # the file it comes from
    cmdline: KernelCmdline | None  # None: nothing configured there (or unknown boot loader)

    def to_json(self) -> dict:
        return {"source": self.source, "cmdline": str(self.cmdline) if self.cmdline else None}


@dataclass(frozen=True)
class HostFacts:
    cpu_vendor: str  # "intel", "amd" or "unknown"
    kernel: str
    cmdline: KernelCmdline
    firmware: str  # "uefi" or "bios"
    secure_boot: bool | None
    acpi_tables: tuple[str, ...]
    iommu_groups: dict[int, tuple[str, ...]]
    iommu_units: tuple[str, ...]  # /sys/class/iommu: dmar0, ivhd0, ...
    interrupt_remapping: bool | None  # None: the kernel log was not readable
    kernel_config: dict[str, str]  # CONFIG_* -> y/m/n (n for "is not set"); {} if unreadable
    devices: tuple[PciDevice, ...]
    root_fstype: str | None
    root_source: str | None
    root_disks: tuple[DevicePath, ...]
    mgmt_connection: str | None  # $SSH_CONNECTION as the host saw it
    mgmt_interface: str | None
    mgmt_nics: tuple[DevicePath, ...]
    dev_vfio: tuple[str, ...]
    vfio_modules: dict[str, str]  # name -> loaded / builtin / absent
    bootloader: Bootloader
    configured_cmdline: ConfiguredCmdline
    probe_uid: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def iommu_in_firmware(self) -> bool:
        """The firmware describes an IOMMU: ACPI DMAR (Intel VT-d) or IVRS (AMD-Vi)."""
        return "DMAR" in self.acpi_tables or "IVRS" in self.acpi_tables

    @property
    def iommu_active(self) -> bool:
        """The kernel runs an IOMMU: its groups are populated."""
        return bool(self.iommu_groups)

    @property
    def passthrough_mode(self) -> bool:
        """``iommu=pt``: host devices bypass translation (faster host DMA, less isolation)."""
        return self.cmdline.get("iommu") == "pt"

    @property
    def kernel_enables_intel_iommu_by_default(self) -> bool | None:
        """None when the kernel's config was not readable."""
        if not self.kernel_config:
            return None
        return any(self.kernel_config.get(key) == "y" for key in _INTEL_DEFAULT_ON)

    @property
    def gpus(self) -> list[Gpu]:
        return gpus_of(self.devices)

    @property
    def vfio_groups(self) -> tuple[int, ...]:
        """The IOMMU groups with a /dev/vfio node (the node ``vfio`` is the container)."""
        return tuple(sorted(int(e) for e in self.dev_vfio if e.isdigit()))

    @property
    def root_disk_controllers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d.controller for d in self.root_disks if d.controller))

    @property
    def mgmt_nic_addresses(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n.controller for n in self.mgmt_nics if n.controller))

    def device(self, address: str) -> PciDevice | None:
        return next((d for d in self.devices if d.address == address), None)

    def group_members(self, group: int) -> tuple[str, ...]:
        return self.iommu_groups.get(group, ())

    def to_json(self) -> dict:
        return {
            "cpu_vendor": self.cpu_vendor,
            "kernel": self.kernel,
            "cmdline": str(self.cmdline),
            "configured_cmdline": self.configured_cmdline.to_json(),
            "firmware": self.firmware,
            "secure_boot": self.secure_boot,
            "acpi_tables": list(self.acpi_tables),
            "iommu_in_firmware": self.iommu_in_firmware,
            "iommu_active": self.iommu_active,
            "iommu_units": list(self.iommu_units),
            "interrupt_remapping": self.interrupt_remapping,
            "passthrough_mode": self.passthrough_mode,
            "kernel_enables_intel_iommu_by_default": self.kernel_enables_intel_iommu_by_default,
            "iommu_groups": {str(k): list(v) for k, v in sorted(self.iommu_groups.items())},
            "bootloader": self.bootloader.to_json(),
            "root_fs": {"source": self.root_source, "fstype": self.root_fstype},
            "root_disks": [d.to_json() for d in self.root_disks],
            "mgmt_nic": {"connection": self.mgmt_connection, "interface": self.mgmt_interface,
                         "devices": [n.to_json() for n in self.mgmt_nics]},
            "dev_vfio": list(self.dev_vfio),
            "vfio_modules": self.vfio_modules,
            "devices": [d.to_json() for d in self.devices],
            "gpus": [g.to_json() for g in self.gpus],
            "notes": list(self.notes),
        }


def _first(section: Section) -> str:
    return next(section.nonblank(), "")


def parse_cpu_vendor(section: Section) -> str:
    line = _first(section)
    if "GenuineIntel" in line:
        return "intel"
    if "AuthenticAMD" in line or "HygonGenuine" in line:
        return "amd"
    return "unknown"


def parse_iommu_groups(section: Section) -> dict[int, tuple[str, ...]]:
    groups: dict[int, list[str]] = {}
    for line in section.nonblank():
        match = _GROUP_PATH.search(line)
        if match:
            groups.setdefault(int(match["group"]), []).append(match["address"])
    return {g: tuple(sorted(members)) for g, members in sorted(groups.items())}


def parse_kernel_config(section: Section) -> dict[str, str]:
    config: dict[str, str] = {}
    for line in section.nonblank():
        if line.startswith("# CONFIG_") and line.endswith(" is not set"):
            config[line[2:].split()[0]] = "n"
        elif line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            config[key] = value.strip().strip('"')
    return config


def parse_interrupt_remapping(section: Section) -> bool | None:
    if section.exit_code != 0:  # absent, or the log could not be read
        return None
    return any(_IR_ENABLED.search(line) for line in section.lines)


def parse_secure_boot(section: Section) -> bool | None:
    """The SecureBoot UEFI variable's value; False when the firmware has no such variable."""
    value = _first(section)
    if not section.present:
        return None
    if value == "no SecureBoot variable":
        return False
    return value == "1" if value.isdigit() else None


def parse_device_paths(section: Section, prefix: str = "") -> tuple[DevicePath, ...]:
    """Lines ``[PREFIX] NAME SYSFS_PATH`` -> devices with the PCI functions on their path."""
    paths = []
    for line in section.nonblank():
        words = line.split()
        if prefix:
            if not words or words[0] != prefix:
                continue
            words = words[1:]
        if len(words) < 2:
            continue
        name, path = words[0], words[1]
        paths.append(DevicePath(name, path, tuple(ADDRESS_IN_TEXT.findall(path))))
    return tuple(paths)


def _mgmt(section: Section) -> tuple[str | None, str | None]:
    connection = interface = None
    for line in section.nonblank():
        key, _, value = line.partition(" ")
        if key == "connection":
            connection = value.strip()
        elif key == "interface":
            interface = value.strip()
    return connection, interface


def _probe_uid(section: Section) -> int | None:
    for line in section.nonblank():
        key, _, value = line.partition(" ")
        if key == "uid" and value.strip().isdigit():
            return int(value)
    return None


def parse_host_facts(text: str) -> HostFacts:
    probe: ProbeOutput = split_sections(text)
    notes: list[str] = []

    if "probe" not in probe.sections:
        notes.append("the output does not start with gpuprov's probe header")
    uid = _probe_uid(probe.get("probe"))
    if uid not in (0, None):
        notes.append(f"the probe ran as uid {uid}, not root: some facts may be missing")

    firmware = _first(probe.get("firmware")) or "unknown"
    secure_boot = parse_secure_boot(probe.get("secure_boot"))
    if secure_boot is None:
        secure_boot = secure_boot_from_bootctl(probe.get("bootctl_status"))

    groups = parse_iommu_groups(probe.get("iommu_groups"))
    group_of = {address: group for group, members in groups.items() for address in members}
    devices = merge_devices(parse_lspci(probe.get("lspci").lines),
                            parse_pci_sysfs(probe.get("pci_sysfs").lines), group_of)
    if not probe.get("lspci").present:
        notes.append("lspci is not installed (pciutils): device names and modules are missing")

    root = _first(probe.get("root_fs")).split()
    root_source = root[0] if root else None
    root_fstype = root[1] if len(root) > 1 else None

    dmesg = probe.get("dmesg")
    interrupt_remapping = parse_interrupt_remapping(dmesg)
    if interrupt_remapping is None:
        notes.append("the kernel log was not readable: interrupt remapping unknown")

    config_section = probe.get("kernel_config")
    kernel_config = parse_kernel_config(config_section) if config_section.present else {}
    if not kernel_config:
        notes.append("the kernel's config (/boot/config-*) was not readable")

    bootloader = detect_bootloader(probe, firmware=firmware, secure_boot=secure_boot,
                                   root_fstype=root_fstype, root_source=root_source)
    configured = _configured_cmdline(probe, bootloader)

    connection, interface = _mgmt(probe.get("mgmt_nic"))
    dev_vfio = probe.get("dev_vfio")
    return HostFacts(
        cpu_vendor=parse_cpu_vendor(probe.get("cpu_vendor")),
        kernel=_first(probe.get("kernel")),
        cmdline=KernelCmdline.parse(probe.get("cmdline").text),
        firmware=firmware,
        secure_boot=secure_boot,
        acpi_tables=tuple(probe.get("acpi_tables").nonblank()),
        iommu_groups=groups,
        iommu_units=tuple(probe.get("iommu_class").nonblank()),
        interrupt_remapping=interrupt_remapping,
        kernel_config=kernel_config,
        devices=tuple(devices),
        root_fstype=root_fstype,
        root_source=root_source,
        root_disks=parse_device_paths(probe.get("root_disk")),
        mgmt_connection=connection,
        mgmt_interface=interface,
        mgmt_nics=parse_device_paths(probe.get("mgmt_nic"), prefix="device"),
        dev_vfio=tuple(dev_vfio.nonblank()) if dev_vfio.present else (),
        vfio_modules=dict(line.split(None, 1) for line in probe.get("vfio_modules").nonblank()
                          if len(line.split()) == 2),
        bootloader=bootloader,
        configured_cmdline=configured,
        probe_uid=uid,
        notes=tuple(notes),
    )


def _configured_cmdline(probe: ProbeOutput, bootloader: Bootloader) -> ConfiguredCmdline:
    source = bootloader.cmdline_source
    if source == GRUB_DEFAULT_FILE:
        files = [probe.file(GRUB_DEFAULT_FILE), *probe.files_under(GRUB_DEFAULT_DIR)]
        text = grub_cmdline(files)
        return ConfiguredCmdline(source, KernelCmdline.parse(text) if text is not None else None)
    if source == KERNEL_CMDLINE_FILE:
        section = probe.file(KERNEL_CMDLINE_FILE)
        if section.present:
            return ConfiguredCmdline(source, KernelCmdline.parse(" ".join(section.nonblank())))
        return ConfiguredCmdline(source, None)
    return ConfiguredCmdline(None, None)
