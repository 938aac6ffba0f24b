"""Proxmox VE passthrough decisions, pure: API answers in, API parameters and refusals out.

The proxmoxer layer (``gpuprov.hypervisors.proxmox``) fetches the node's PCI listing, the VM
configs and mappings, and the card's BARs; this module decides which card that is, whether it is
free, which path (raw ``host=`` or a PCI resource mapping) an identity may take, what a new VM's
config is, what an existing VM must change, and how large its 64-bit MMIO window must be.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gpuprov.errors import NotFoundError, Refused, UsageError
from gpuprov.facts.pci import DeviceSelector, slot_of

MAX_HOSTPCI = 16  # hostpci0..hostpci15
# OVMF's default 64-bit PCI MMIO aperture; a card whose BARs (with room for alignment and the
# VM's other devices) need more comes up with "BAR0 is 0M" in the guest.
OVMF_DEFAULT_MMIO64 = 32 * 2**30
MMIO64_FW_CFG = "opt/ovmf/X-PciMmio64Mb"

# Linux's flags in /sys/bus/pci/devices/*/resource (include/linux/ioport.h)
IORESOURCE_MEM = 0x00000200
IORESOURCE_MEM_64 = 0x00100000


class ProxmoxRefused(Refused):
    """A Proxmox safety check said no; nothing was changed."""


@dataclass(frozen=True)
class PciFunction:
    """One entry of ``GET /nodes/{node}/hardware/pci``."""

    address: str  # 0000:26:00.0
    class_code: str  # 0x030000
    ids: str  # 10de:1d01
    name: str
    iommugroup: int  # -1: the node runs without an IOMMU
    subsystem: str | None = None  # 1458:3771

    @property
    def is_display(self) -> bool:
        return self.class_code.lower().removeprefix("0x").startswith("03")


# PVE's own rules for what it would refuse, checked before any API call: the formats of
# pve-common's JSONSchema (dns-name, pve-configid), the create schema's memory minimum and
# qemu-server's largest VM memory (MAX_MEM).
_DNS_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
DNS_NAME = re.compile(rf"(?:{_DNS_LABEL}\.)*{_DNS_LABEL}")
CONFIG_ID = re.compile(r"[a-zA-Z][a-zA-Z0-9_-]+")
MEMORY_MIB = (16, 4 * 2**20)


def check_vm_name(name: str) -> None:
    if not DNS_NAME.fullmatch(name):
        raise UsageError(f"--name {name!r} is not a name Proxmox VE takes (a DNS name)",
                         "use letters, digits and -, in labels separated by dots; no _ or "
                         "spaces")


def check_mapping_id(name: str) -> None:
    if not CONFIG_ID.fullmatch(name):
        raise UsageError(f"{name!r} is not a valid PCI mapping id",
                         "use 2 or more letters, digits, - and _, starting with a letter")


def check_memory(mib: int) -> None:
    low, high = MEMORY_MIB
    if not low <= mib <= high:
        raise UsageError(f"--memory {mib} MiB is outside what Proxmox VE takes ({low} MiB to "
                         f"{high // 2**20} TiB)", "for example --memory 8G")


def check_fits_node(cores: int, memory_mib: int, node: str, entry: Mapping) -> None:
    """A VM larger than its node cannot start: qemu-server refuses more vCPUs than the node
    has, and passthrough pins all of the VM's memory."""
    cpus, memory = entry.get("maxcpu"), entry.get("maxmem")
    if cpus and cores > int(cpus):
        raise UsageError(f"--cores {cores} is more than node {node}'s {cpus} CPUs",
                         f"give --cores {cpus} or fewer")
    if memory and memory_mib * 2**20 > int(memory):
        raise UsageError(f"--memory {memory_mib} MiB is more than node {node}'s "
                         f"{int(memory) // 2**20} MiB, and passthrough pins all of it",
                         "give a smaller --memory")


def pci_functions(listing: Iterable[Mapping]) -> list[PciFunction]:
    def ids(vendor: str | None, device: str | None) -> str | None:
        if not vendor or not device:
            return None
        return f"{vendor.lower().removeprefix('0x')}:{device.lower().removeprefix('0x')}"

    return [PciFunction(
        address=str(entry["id"]).lower(),
        class_code=str(entry.get("class", "")),
        ids=ids(entry.get("vendor"), entry.get("device")) or "????:????",
        name=" ".join(str(entry[k]) for k in ("vendor_name", "device_name") if entry.get(k)),
        iommugroup=int(entry.get("iommugroup", -1)),
        subsystem=ids(entry.get("subsystem_vendor"), entry.get("subsystem_device")),
    ) for entry in listing]


@dataclass(frozen=True)
class Card:
    """The functions being passed through, all from one slot."""

    slot: str  # 0000:26:00
    functions: tuple[PciFunction, ...]
    whole_slot: bool  # hostpci names the slot, so every function goes with it

    @property
    def display(self) -> PciFunction:
        return next((f for f in self.functions if f.is_display), self.functions[0])

    @property
    def addresses(self) -> list[str]:
        return [f.address for f in self.functions]

    @property
    def hostpci_path(self) -> str:
        return self.slot if self.whole_slot else self.functions[0].address


def choose_card(selector: DeviceSelector, functions: Sequence[PciFunction], node: str) -> Card:
    """The card ``selector`` names on ``node``: a display device, in a known IOMMU group."""
    chosen = tuple(f for f in functions if selector.matches(f.address))
    if not chosen:
        gpus = ", ".join(f.address for f in functions if f.is_display) or "none"
        raise NotFoundError(f"node {node} has no PCI device at {selector}",
                            f"its display devices: {gpus}")
    if not any(f.is_display for f in chosen):
        raise ProxmoxRefused(f"{selector} on node {node} is not a GPU ({chosen[0].name}, class "
                             f"{chosen[0].class_code})",
                             "give the address of the card's display function (class 03xx)")
    unknown = [f.address for f in chosen if f.iommugroup < 0]
    if unknown:
        raise ProxmoxRefused(
            f"node {node} reports no IOMMU group for {', '.join(unknown)}: the IOMMU is off",
            f"prepare the node first: gpuprov host setup {node} --gpu {selector}")
    return Card(slot_of(chosen[0].address), chosen, selector.function is None)


# --- property strings ---------------------------------------------------------------------

def parse_property_string(value: str, default_key: str) -> dict[str, str]:
    """``0000:26:00,pcie=1`` -> ``{"host": "0000:26:00", "pcie": "1"}`` (PVE's key=value list,
    whose first item may leave out its default key)."""
    parsed: dict[str, str] = {}
    for item in filter(None, value.split(",")):
        key, sep, text = item.partition("=")
        if sep:
            parsed[key.strip()] = text.strip()
        else:
            parsed[default_key] = item.strip()
    return parsed


def _paths(text: str) -> list[str]:
    """The PCI paths of a hostpci ``host=`` or a mapping's ``path=`` (``;``-separated), with a
    domain: PVE accepts ``26:00`` for ``0000:26:00``."""
    return [p if p.count(":") == 2 else f"0000:{p}" for p in text.lower().split(";") if p]


def _overlaps(path: str, addresses: Iterable[str]) -> bool:
    """A slot path takes every function of the slot; a function path only itself."""
    return any(address == path or slot_of(address) == path or slot_of(path) == address
               for address in addresses)


@dataclass(frozen=True)
class PciMapping:
    """One PCI resource mapping (``/cluster/mapping/pci``), reduced to what matters here."""

    name: str
    paths: dict[str, list[str]]  # node -> the paths it maps there


def parse_mappings(entries: Iterable[Mapping]) -> list[PciMapping]:
    mappings = []
    for entry in entries:
        paths: dict[str, list[str]] = {}
        for item in entry.get("map") or []:
            fields = parse_property_string(str(item), "node")
            if "node" in fields and "path" in fields:
                paths.setdefault(fields["node"], []).extend(_paths(fields["path"]))
        mappings.append(PciMapping(str(entry["id"]), paths))
    return mappings


def hostpci_users(card: Card, node: str, configs: Mapping[str, Mapping],
                  mappings: Sequence[PciMapping]) -> dict[str, str]:
    """Which VMs (``"101"`` -> ``"hostpci0"``) on ``node`` already have any of the card's
    functions, by raw address or through a mapping."""
    by_name = {m.name: m for m in mappings}
    users = {}
    for vmid, config in configs.items():
        for key, value in config.items():
            if not re.fullmatch(r"hostpci\d+", key):
                continue
            fields = parse_property_string(str(value), "host")
            if "mapping" in fields:
                mapping = by_name.get(fields["mapping"])
                paths = mapping.paths.get(node, []) if mapping else []
            else:
                paths = _paths(fields.get("host", ""))
            if any(_overlaps(path, card.addresses) for path in paths):
                users[vmid] = key
    return users


def check_free(card: Card, node: str, users: Mapping[str, str], vm: str | None = None) -> None:
    others = {vmid: key for vmid, key in users.items() if vmid != vm}
    if others:
        listed = ", ".join(f"VM {vmid} ({key})" for vmid, key in sorted(others.items()))
        raise ProxmoxRefused(f"{card.hostpci_path} on node {node} is already given to {listed}",
                             "remove it there first (qm set VMID --delete hostpciN), or choose "
                             "another card")
    if vm is not None and vm in users:
        raise ProxmoxRefused(f"VM {vm} already has {card.hostpci_path} ({users[vm]})",
                             "nothing to do; see it with: qm config " + vm)


# --- which path: raw address or PCI resource mapping --------------------------------------

def mapping_name(card: Card) -> str:
    """A default mapping id for the card: ``gpu-26-00`` (PVE config ids: letters, digits, -)."""
    bus_device = card.slot.split(":", 1)[1].replace(":", "-")
    return f"gpu-{bus_device}"


def may_use_raw_address(user: str, is_token: bool) -> bool:
    """PVE lets only a root@pam password login set ``hostpciN: host=...`` (and ``args``);
    every API token, root@pam's own included, must go through a mapping."""
    return user == "root@pam" and not is_token


def mapping_entry(card: Card, node: str) -> str:
    """The ``map`` item for ``node``: path, the ids PVE checks for hardware changes, the group."""
    display = card.display
    entry = f"node={node},path={card.hostpci_path},id={display.ids}"
    if display.iommugroup >= 0:
        entry += f",iommugroup={display.iommugroup}"
    if display.subsystem:
        entry += f",subsystem-id={display.subsystem}"
    return entry


def check_mapping(mapping: PciMapping, card: Card, node: str) -> None:
    """A named mapping must map exactly this card on this node."""
    paths = mapping.paths.get(node)
    if not paths:
        raise ProxmoxRefused(f"PCI mapping {mapping.name!r} has no entry for node {node}",
                             f"add one in Datacenter > Resource Mappings, or use "
                             f"--mapping {mapping_name(card)} to let gpuprov create one")
    if not any(_overlaps(path, card.addresses) for path in paths):
        raise ProxmoxRefused(
            f"PCI mapping {mapping.name!r} maps {', '.join(paths)} on node {node}, not "
            f"{card.hostpci_path}", "choose the mapping of this card, or another --mapping name")


def hostpci_value(card: Card, *, mapping: str | None, x_vga: bool) -> str:
    target = f"mapping={mapping}" if mapping else f"host={card.hostpci_path}"
    return f"{target},pcie=1" + (",x-vga=1" if x_vga else "")


def free_hostpci_key(config: Mapping) -> str:
    for index in range(MAX_HOSTPCI):
        if f"hostpci{index}" not in config:
            return f"hostpci{index}"
    raise ProxmoxRefused(f"the VM already has all {MAX_HOSTPCI} hostpci slots in use",
                         "remove one first (qm set VMID --delete hostpciN)")


# --- 64-bit MMIO window ---------------------------------------------------------------------

@dataclass(frozen=True)
class Bar:
    index: int
    size: int
    is_64bit: bool


def parse_resource(text: str) -> list[Bar]:
    """BARs 0-5 of ``/sys/bus/pci/devices/ADDR/resource`` (``start end flags`` in hex; an
    unused BAR is all zeros); I/O-port BARs and the ROM line are left out."""
    bars = []
    for index, line in enumerate(text.splitlines()[:6]):
        start, end, flags = (int(word, 16) for word in line.split())
        if end and flags & IORESOURCE_MEM:
            bars.append(Bar(index, end - start + 1, bool(flags & IORESOURCE_MEM_64)))
    return bars


@dataclass(frozen=True)
class MmioPlan:
    needed: int  # bytes of 64-bit MMIO window the VM needs (0: OVMF's default is enough)
    changes: dict[str, str] = field(default_factory=dict)  # VM config keys to set
    explanation: str = ""


def _next_power_of_two(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()


def plan_mmio(bars: Mapping[str, Sequence[Bar]], *, raw_allowed: bool, cpu: str,
              args: str | None) -> MmioPlan:
    """Size the VM's 64-bit MMIO window from the card's 64-bit BARs.

    Power-of-two BARs pack into a window of the next power of two above their sum; doubling
    that leaves room for the alignment of the bridges and the VM's other devices. Up to OVMF's
    default aperture nothing changes. Above it, a root@pam login sets the aperture exactly
    (``-fw_cfg opt/ovmf/X-PciMmio64Mb``, through ``args``, which only root may set); anyone
    else gets ``phys-bits=host`` on the CPU, from which OVMF sizes its aperture itself.
    """
    total = sum(bar.size for function in bars.values() for bar in function if bar.is_64bit)
    needed = _next_power_of_two(2 * total) if total else 0
    if needed <= OVMF_DEFAULT_MMIO64:
        return MmioPlan(0, explanation=f"the card's 64-bit BARs ({_human(total)}) fit OVMF's "
                        f"default 64-bit MMIO window ({_human(OVMF_DEFAULT_MMIO64)})")
    reason = (f"the card's 64-bit BARs ({_human(total)}) do not fit OVMF's default 64-bit MMIO "
              f"window ({_human(OVMF_DEFAULT_MMIO64)}); without more the guest shows "
              "'BAR0 is 0M'")
    if raw_allowed:
        option = f"-fw_cfg name={MMIO64_FW_CFG},string={needed // 2**20}"
        merged = f"{args} {option}" if args and MMIO64_FW_CFG not in args else (args or option)
        return MmioPlan(needed, {"args": merged},
                        f"{reason}: set the window to {_human(needed)} ({option})")
    fields = parse_property_string(cpu, "cputype")
    fields["phys-bits"] = "host"
    value = ",".join([fields.pop("cputype", "host")] + [f"{k}={v}" for k, v in fields.items()])
    return MmioPlan(needed, {"cpu": value},
                    f"{reason}: the CPU gets phys-bits=host so OVMF sizes the window from the "
                    f"host's physical address bits (an exact {_human(needed)} window needs "
                    "'args', which only a root@pam login may set)")


def _human(size: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor:
            return f"{size / factor:g} {unit}"
    return f"{size} B"


# --- what a VM must be ------------------------------------------------------------------------

def efidisk(storage: str) -> str:
    # 4m is the OVMF vars store PVE recommends (and Secure Boot requires); no pre-enrolled
    # keys, so Secure Boot is off and the guest loads unsigned (NVIDIA, DKMS) kernel modules.
    return f"{storage}:1,efitype=4m,pre-enrolled-keys=0"


@dataclass(frozen=True)
class NewVm:
    vmid: int
    name: str
    cores: int
    memory_mib: int
    disk_gib: int
    storage: str
    bridge: str = "vmbr0"
    iso: str | None = None


def create_params(vm: NewVm, hostpci: str, mmio: MmioPlan) -> dict[str, str | int]:
    """``POST /nodes/{node}/qemu`` parameters for a passthrough VM; the reasons are in
    docs/proxmox.md."""
    params: dict[str, str | int] = {
        "vmid": vm.vmid,
        "name": vm.name,
        "ostype": "l26",
        "machine": "q35",  # PCIe topology: the card sits on a PCIe root port (pcie=1)
        "bios": "ovmf",  # UEFI: what current GPU option ROMs and drivers expect
        "efidisk0": efidisk(vm.storage),
        "cpu": "host",
        "cores": vm.cores,
        "memory": str(vm.memory_mib),
        "balloon": 0,  # passthrough pins all guest memory for DMA; a balloon cannot shrink it
        "scsihw": "virtio-scsi-single",
        "scsi0": f"{vm.storage}:{vm.disk_gib},iothread=1,discard=on",
        "net0": f"virtio,bridge={vm.bridge}",
        "hostpci0": hostpci,
    }
    if vm.iso:
        params["ide2"] = f"{vm.iso},media=cdrom"
        params["boot"] = "order=scsi0;ide2"
    params.update(mmio.changes)
    return params


def conversion(config: Mapping[str, str], storage: str) -> dict[str, str | int]:
    """What an existing VM must change to take a passthrough card: machine q35, bios ovmf with
    an EFI disk, no memory ballooning. Empty when it already has all of that."""
    changes: dict[str, str | int] = {}
    machine = parse_property_string(str(config.get("machine", "")), "type").get("type", "")
    if "q35" not in machine:
        changes["machine"] = "q35"
    if config.get("bios") != "ovmf":
        changes["bios"] = "ovmf"
    if "efidisk0" not in config:
        changes["efidisk0"] = efidisk(storage)
    if str(config.get("balloon", "")) != "0":
        changes["balloon"] = 0
    return changes


def describe_conversion(config: Mapping[str, str], changes: Mapping[str, str | int]) -> list[str]:
    notes = {
        "machine": "PCIe passthrough needs the q35 machine",
        "bios": "UEFI firmware; an OS installed for legacy BIOS will not boot until it is "
                "reinstalled or converted to UEFI",
        "efidisk0": "stores the UEFI variables; no pre-enrolled keys, so Secure Boot is off",
        "balloon": "passthrough pins all guest memory; ballooning cannot work",
    }
    return [f"{key}: {config.get(key, '(unset)')} -> {value}  ({notes[key]})"
            for key, value in changes.items()]


def undo_params(before: Mapping[str, str], changed: Iterable[str]) -> dict[str, str]:
    """``PUT config`` parameters that put ``changed`` keys back as they were in ``before``."""
    params: dict[str, str] = {}
    removed = [key for key in changed if key not in before]
    for key in changed:
        if key in before:
            params[key] = str(before[key])
    if removed:
        params["delete"] = ",".join(removed)
    return params
