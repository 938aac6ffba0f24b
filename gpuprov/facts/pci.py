"""PCI addresses and devices: the forms users type, ``lspci -Dnnk`` and sysfs, parsed.

An address names a function (``0000:26:00.1``); a slot (``0000:26:00``) holds up to eight
functions, which is how a GPU's display and HDMI-audio functions belong together.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from gpuprov.errors import UsageError

_USER_ADDRESS = re.compile(
    r"^(?:(?P<domain>[0-9a-f]{1,8}):)?(?P<bus>[0-9a-f]{1,2}):(?P<device>[0-9a-f]{1,2})"
    r"(?:\.(?P<function>[0-7]))?$"
)
# A full address somewhere in a sysfs path or a log line.
ADDRESS_IN_TEXT = re.compile(r"\b([0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])\b")


@dataclass(frozen=True, order=True)
class DeviceSelector:
    """What the user named: a whole slot (``function`` None) or one function of it."""

    slot: str  # 0000:26:00
    function: int | None = None

    @property
    def address(self) -> str | None:
        return None if self.function is None else f"{self.slot}.{self.function}"

    def matches(self, address: str) -> bool:
        if self.function is None:
            return slot_of(address) == self.slot
        return address == self.address

    def __str__(self) -> str:
        return self.address or self.slot


def parse_address(text: str) -> DeviceSelector:
    """Accept ``26:00``, ``26:00.0``, ``0000:26:00.0`` (any case); refuse anything else.

    Bus and device are hexadecimal; the device number is at most 1f, the function at most 7.
    """
    cleaned = text.strip().lower()
    match = _USER_ADDRESS.match(cleaned)
    if not match or int(match["device"], 16) > 0x1F:
        raise UsageError(
            f"{text!r} is not a PCI address",
            "give the GPU as lspci shows it: BUS:DEVICE (26:00), with a function (26:00.0) "
            "or with the domain (0000:26:00.0); all numbers hexadecimal, device 00-1f, "
            "function 0-7",
        )
    domain = int(match["domain"] or "0", 16)
    slot = f"{domain:04x}:{int(match['bus'], 16):02x}:{int(match['device'], 16):02x}"
    function = int(match["function"]) if match["function"] is not None else None
    return DeviceSelector(slot, function)


def normalize_address(text: str) -> str:
    """``01:00.0`` or ``0000:01:00.0`` -> ``0000:01:00.0`` (for addresses tools print)."""
    selector = parse_address(text)
    if selector.function is None:
        raise UsageError(f"{text!r} names a slot, not a PCI function")
    return f"{selector.slot}.{selector.function}"


def slot_of(address: str) -> str:
    return address.rsplit(".", 1)[0]


@dataclass(frozen=True)
class PciDevice:
    """One PCI function. ``class_code`` is 4 hex digits: base class + subclass (``0300``)."""

    address: str
    class_code: str
    vendor_device: str  # 10de:1d01
    description: str = ""  # lspci's class and device names
    driver: str | None = None
    modules: tuple[str, ...] = ()
    iommu_group: int | None = None
    boot_vga: bool | None = None

    @property
    def slot(self) -> str:
        return slot_of(self.address)

    @property
    def is_display(self) -> bool:
        return self.class_code.startswith("03")

    @property
    def is_bridge(self) -> bool:
        """Host and PCI-to-PCI bridges (root ports): plumbing, not endpoints that do DMA."""
        return self.class_code in ("0600", "0604")

    def to_json(self) -> dict:
        return {
            "address": self.address, "class": self.class_code,
            "vendor_device": self.vendor_device, "description": self.description,
            "driver": self.driver, "modules": list(self.modules),
            "iommu_group": self.iommu_group, "boot_vga": self.boot_vga,
        }


@dataclass(frozen=True)
class Gpu:
    """A display-class device with every function of its slot (audio, USB-C, ...)."""

    slot: str
    functions: tuple[PciDevice, ...] = field(default_factory=tuple)

    @property
    def display(self) -> PciDevice:
        return next(f for f in self.functions if f.is_display)

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(f.address for f in self.functions)

    @property
    def groups(self) -> tuple[int, ...]:
        return tuple(sorted({f.iommu_group for f in self.functions if f.iommu_group is not None}))

    @property
    def is_boot_vga(self) -> bool:
        return any(f.boot_vga for f in self.functions)

    def to_json(self) -> dict:
        return {"slot": self.slot, "functions": [f.to_json() for f in self.functions],
                "iommu_groups": list(self.groups), "boot_vga": self.is_boot_vga}


_LSPCI_HEAD = re.compile(
    r"^(?P<address>\S+) (?P<class_name>.*?) \[(?P<class>[0-9a-f]{4})\]: "
    r"(?P<name>.*?) ?\[(?P<ids>[0-9a-f]{4}:[0-9a-f]{4})\](?: \(rev [0-9a-f]+\))?"
    r"(?: \(prog-if .*\))?$"
)


def _with_domain(address: str) -> str:
    return address if address.count(":") == 2 else f"0000:{address}"


def parse_lspci(lines: Iterable[str]) -> list[PciDevice]:
    """``lspci -nnk`` (with or without ``-D``) -> devices, in lspci's order."""
    devices: list[dict] = []
    for raw in lines:
        line = raw.rstrip()
        if not line:
            continue
        if not line[0].isspace():
            match = _LSPCI_HEAD.match(line)
            if match is None or not ADDRESS_IN_TEXT.fullmatch(_with_domain(match["address"])):
                continue
            name = match["name"].strip()
            devices.append({
                "address": _with_domain(match["address"]), "class_code": match["class"],
                "vendor_device": match["ids"],
                "description": f"{match['class_name']}: {name}" if name else match["class_name"],
            })
        elif devices:
            key, _, value = line.strip().partition(": ")
            if key == "Kernel driver in use":
                devices[-1]["driver"] = value.strip()
            elif key == "Kernel modules":
                devices[-1]["modules"] = tuple(m.strip() for m in value.split(",") if m.strip())
    return [PciDevice(**d) for d in devices]


def parse_pci_sysfs(lines: Iterable[str]) -> list[PciDevice]:
    """The probe's ``pci_sysfs`` lines: ``ADDR class=0x030000 vendor=0x.. device=0x.. ...``."""
    devices = []
    for line in lines:
        words = line.split()
        if not words or not ADDRESS_IN_TEXT.fullmatch(words[0]):
            continue
        fields = dict(w.partition("=")[::2] for w in words[1:] if "=" in w)
        vendor = fields.get("vendor", "").removeprefix("0x")
        device = fields.get("device", "").removeprefix("0x")
        group = fields.get("iommu_group", "")
        boot_vga = fields.get("boot_vga")
        devices.append(PciDevice(
            address=words[0],
            class_code=fields.get("class", "0x000000").removeprefix("0x")[:4],
            vendor_device=f"{vendor}:{device}",
            driver=fields.get("driver") or None,
            iommu_group=int(group) if group.isdigit() else None,
            boot_vga=None if boot_vga is None else boot_vga.strip() == "1",
        ))
    return devices


def merge_devices(from_lspci: list[PciDevice], from_sysfs: list[PciDevice],
                  groups: dict[str, int]) -> list[PciDevice]:
    """One device list: sysfs is the truth for class, ids, driver and boot_vga, lspci adds
    names and modules, ``groups`` (from /sys/kernel/iommu_groups) fills missing groups."""
    named = {d.address: d for d in from_lspci}
    merged: dict[str, PciDevice] = {}
    for dev in from_sysfs or from_lspci:
        extra = named.get(dev.address)
        merged[dev.address] = PciDevice(
            address=dev.address,
            class_code=dev.class_code,
            vendor_device=dev.vendor_device,
            description=extra.description if extra else dev.description,
            driver=dev.driver if from_sysfs else (extra.driver if extra else None),
            modules=extra.modules if extra else dev.modules,
            iommu_group=dev.iommu_group if dev.iommu_group is not None
            else groups.get(dev.address),
            boot_vga=dev.boot_vga,
        )
    return sorted(merged.values(), key=lambda d: d.address)


def gpus_of(devices: Iterable[PciDevice]) -> list[Gpu]:
    """Every slot holding a display-class function, with all the functions of that slot."""
    devices = list(devices)
    slots = sorted({d.slot for d in devices if d.is_display})
    return [Gpu(slot, tuple(sorted((d for d in devices if d.slot == slot),
                                   key=lambda d: d.address))) for slot in slots]
