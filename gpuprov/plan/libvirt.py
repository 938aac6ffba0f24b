"""libvirt passthrough, pure: the domain XML of a new q35/OVMF VM with the card, what an
existing domain must change to take it, and what a domain's XML says (read back after the run).

The reasons for each setting are in docs/libvirt.md. Nothing here touches a host.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

import jinja2

from gpuprov.errors import GpuprovError, Refused, UsageError

DOMAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,62}")


class LibvirtRefused(Refused):
    """The host or domain is not in a state this passthrough can be done in."""


@dataclass(frozen=True)
class NewDomain:
    name: str
    domain_type: str  # kvm, or qemu (software emulation) where the host has no usable KVM
    memory_mib: int
    cores: int
    functions: tuple[str, ...]  # the card's host PCI addresses, function 0 first
    console_log: str  # the guest's serial console, kept on the host
    disk: str | None = None  # qcow2 volume path on the host
    iso: str | None = None
    kernel: str | None = None  # direct kernel boot (a kernel, initrd and command line on the host)
    initrd: str | None = None
    cmdline: str | None = None
    network: str | None = None  # a libvirt network, or
    bridge: str | None = None  # a host bridge
    hide_hypervisor: bool = False


def check_name(name: str) -> str:
    if not DOMAIN_NAME.fullmatch(name):
        raise UsageError(f"{name!r} is not a usable libvirt domain name",
                         "use up to 63 letters, digits and . _ + -, starting with a letter or "
                         "digit")
    return name


def default_name(functions: Sequence[str]) -> str:
    """``gpu-01-00`` for the card at 0000:01:00."""
    bus, device = functions[0].split(":")[1:3]
    return f"gpu-{bus}-{device.split('.')[0]}"


def _pci(address: str) -> dict[str, str]:
    domain, bus, rest = address.split(":")
    slot, function = rest.split(".")
    return {"domain": f"0x{domain}", "bus": f"0x{bus}", "slot": f"0x{slot}",
            "function": f"0x{function}"}


def _environment() -> jinja2.Environment:
    return jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True,
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def new_domain_xml(domain: NewDomain) -> str:
    """The ``virsh define`` XML of a new passthrough domain."""
    template = resources.files("gpuprov.plan").joinpath("libvirt_domain.xml.j2").read_text()
    return _environment().from_string(template).render(
        domain=domain, hostdevs=[_pci(a) for a in domain.functions], port=1)


# --- existing domains -----------------------------------------------------------------------

def parse_domain(xml_text: str) -> ET.Element:
    try:
        return ET.fromstring(xml_text)
    except ET.ParseError as error:
        raise GpuprovError(f"libvirt returned a domain XML that does not parse: {error}") from None


def hostdev_sources(root: ET.Element) -> list[str]:
    """Host PCI addresses the domain has as <hostdev> (0000:01:00.0)."""
    sources = []
    for address in root.findall("./devices/hostdev[@type='pci']/source/address"):
        sources.append("{:04x}:{:02x}:{:02x}.{:x}".format(
            *(int(address.get(key, "0"), 0) for key in ("domain", "bus", "slot", "function"))))
    return sources


def card_users(functions: Sequence[str], domains: Mapping[str, str]) -> dict[str, str]:
    """Which domain (by name) already has which of the card's functions."""
    users = {}
    for name, xml_text in domains.items():
        for source in hostdev_sources(parse_domain(xml_text)):
            if source in functions:
                users[source] = name
    return users


def check_free(users: Mapping[str, str], target: str | None) -> None:
    """Refuse a card that any domain has already, the target one included."""
    others = {address: name for address, name in users.items() if name != target}
    if others:
        listing = ", ".join(f"{a} (domain {n})" for a, n in sorted(others.items()))
        raise LibvirtRefused(f"the card is already given to another VM: {listing}",
                             "remove it there first: virsh detach-device, or virsh edit")
    if users:
        raise LibvirtRefused(f"domain {target} already has {', '.join(sorted(users))}",
                             "nothing to do; to start it: virsh start " + str(target))


# QEMU itself beside the guest's RAM (OVMF, device state, its own heap): an estimate, which
# the check keeps free so that starting the domain does not push the host into swap.
QEMU_OVERHEAD_MIB = 256


def meminfo_mib(text: str) -> dict[str, int]:
    """/proc/meminfo's fields, in MiB."""
    fields = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        words = rest.split()
        if words and words[0].isdigit():
            factor = 1024 if words[1:] == ["kB"] else 2**20
            fields[key.strip()] = int(words[0]) * factor // 2**20
    return fields


def check_memory(meminfo: str, memory_mib: int, *, host: str, domain: str) -> None:
    """Refuse a domain whose memory the host cannot lock: passthrough pins all of a VM's memory
    (VFIO maps it for the card's DMA), so it must fit in what the host has available now, or
    QEMU fails at start with "cannot set up guest memory 'pc.ram'"."""
    fields = meminfo_mib(meminfo)
    available = fields.get("MemAvailable", fields.get("MemFree"))
    if available is None:
        return
    if memory_mib + QEMU_OVERHEAD_MIB <= available:
        return
    fits = available - QEMU_OVERHEAD_MIB
    raise LibvirtRefused(
        f"{host} has {available} MiB of memory available (of {fields.get('MemTotal', '?')} "
        f"MiB), and domain {domain} needs {memory_mib} MiB locked in RAM (passthrough pins all "
        f"of a VM's memory) plus about {QEMU_OVERHEAD_MIB} MiB for QEMU; nothing was changed",
        (f"give --memory {fits}M or less, or " if fits >= 64 else "")
        + f"free memory on {host} (other VMs with passthrough hold theirs locked)")


def _is_efi(root: ET.Element) -> bool:
    os_ = root.find("./os")
    if os_ is None:
        return False
    loader = os_.find("./loader")
    return os_.get("firmware") == "efi" or (loader is not None and loader.get("type") == "pflash")


def _secure_boot(root: ET.Element) -> bool:
    """Whether an EFI domain may boot with secure boot: a loader chosen by path says so itself;
    libvirt's firmware autoselection may pick a secure-boot build unless told not to."""
    loader = root.find("./os/loader")
    if loader is not None and (loader.text or "").strip():
        return loader.get("secure") == "yes"
    feature = root.find("./os/firmware/feature[@name='secure-boot']")
    return feature is None or feature.get("enabled") != "no"


def _machine(root: ET.Element) -> str:
    type_ = root.find("./os/type")
    return type_.get("machine", "") if type_ is not None else ""


def attach_xml(xml_text: str, functions: Sequence[str]) -> tuple[str, list[str]]:
    """The domain's new XML with the card on a PCIe root port of its own, and the conversions
    (beyond adding the card) it needed, which the user must confirm."""
    root = parse_domain(xml_text)
    name = root.findtext("./name", "?")
    if "q35" not in _machine(root):
        raise LibvirtRefused(
            f"domain {name} has machine type {_machine(root) or 'unknown'}, not q35: a PCIe card "
            "needs q35, and libvirt cannot change an existing domain's chipset in place",
            "give the card to a new q35 domain (leave out --vm), and move its disks over")
    conversions = []
    os_ = root.find("./os")
    assert os_ is not None  # a domain without <os> does not parse in libvirt
    loader = os_.find("./loader")
    if loader is not None and loader.get("secure") == "yes":
        raise LibvirtRefused(
            f"domain {name} boots the secure-boot firmware {loader.text or ''} chosen by hand",
            "unsigned GPU drivers will not load: pick a non-secure OVMF build with virsh edit "
            "(or remove <loader> and <nvram> and let gpuprov choose), then run this again")
    if not _is_efi(root):
        os_.set("firmware", "efi")
        _firmware_without_secure_boot(os_)
        conversions.append("firmware: BIOS -> UEFI (OVMF, secure boot off); an OS installed "
                           "for BIOS will not boot until it has an EFI boot loader")
    elif _secure_boot(root):
        _firmware_without_secure_boot(os_)
        conversions.append("secure boot: off, so unsigned GPU drivers load")
    backing = root.find("./memoryBacking")
    if backing is None:
        backing = ET.SubElement(root, "memoryBacking")
    if backing.find("./locked") is None:
        ET.SubElement(backing, "locked")
        conversions.append("memory: locked (passthrough pins all guest memory for DMA)")
    devices = root.find("./devices")
    if devices is None:
        devices = ET.SubElement(root, "devices")
    indexes = [int(c.get("index", "0")) for c in devices.findall("./controller[@type='pci']")]
    port = max(indexes, default=0) + 1
    ET.SubElement(devices, "controller", {"type": "pci", "model": "pcie-root-port",
                                          "index": str(port)})
    for index, address in enumerate(functions):
        hostdev = ET.SubElement(devices, "hostdev", {"mode": "subsystem", "type": "pci",
                                                     "managed": "no"})
        ET.SubElement(ET.SubElement(hostdev, "source"), "address", _pci(address))
        guest = {"type": "pci", "domain": "0x0000", "bus": f"0x{port:02x}", "slot": "0x00",
                 "function": f"0x{index:x}"}
        if index == 0 and len(functions) > 1:
            guest["multifunction"] = "on"
        ET.SubElement(hostdev, "address", guest)
    return ET.tostring(root, encoding="unicode"), conversions


def _firmware_without_secure_boot(os_: ET.Element) -> None:
    """Ask libvirt's firmware autoselection for an OVMF build without secure boot."""
    firmware = os_.find("./firmware")
    if firmware is None:
        firmware = ET.SubElement(os_, "firmware")
    for feature in ("secure-boot", "enrolled-keys"):
        element = firmware.find(f"./feature[@name='{feature}']")
        if element is None:
            element = ET.SubElement(firmware, "feature", {"name": feature})
        element.set("enabled", "no")


# --- reading back ---------------------------------------------------------------------------

def domain_settings(xml_text: str) -> dict[str, str]:
    """What matters for passthrough, as the domain's XML (from libvirt) says it."""
    root = parse_domain(xml_text)
    loader = root.find("./os/loader")
    backing = root.find("./memoryBacking")
    log = root.find("./devices/serial/log")
    settings = {
        "type": root.get("type", ""),
        "machine": _machine(root),
        "firmware": "efi" if _is_efi(root) else "bios",
        "secure_boot": "on" if _is_efi(root) and _secure_boot(root) else "off",
        "memory_locked": "yes" if backing is not None and backing.find("./locked") is not None
        else "no",
        "memory_mib": str(_mib(root.find("./memory"))),
        "vcpus": root.findtext("./vcpu", ""),
        "hostdevs": ",".join(hostdev_sources(root)),
    }
    if loader is not None and loader.text:
        settings["loader"] = loader.text.strip()
    if log is not None:
        settings["console_log"] = log.get("file", "")
    return settings


_UNITS = {"b": 1, "bytes": 1, "kb": 1000, "k": 1024, "kib": 1024, "mb": 10**6, "m": 2**20,
          "mib": 2**20, "gb": 10**9, "g": 2**30, "gib": 2**30}


def domain_memory_mib(root: ET.Element) -> int:
    """A domain's memory, in MiB."""
    return _mib(root.find("./memory"))


def _mib(memory: ET.Element | None) -> int:
    if memory is None or not (memory.text or "").strip():
        return 0
    return int(memory.text) * _UNITS[memory.get("unit", "KiB").lower()] // 2**20
