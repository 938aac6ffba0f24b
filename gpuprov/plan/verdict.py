"""Per GPU: ready for passthrough, needs setup (and what is missing), or unsafe (and why).

A refusal is a value with its reason and its fix, never a print. Hard refusals make a GPU
unsafe; an overridable one (the card is the host's boot VGA) only asks for ``--yes``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gpuprov.errors import (
    EXIT_NEEDS_SETUP,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    NotFoundError,
    UsageError,
)
from gpuprov.facts.host import HostFacts
from gpuprov.facts.pci import DeviceSelector, Gpu, PciDevice
from gpuprov.plan.kernel import kernel_params

READY = "ready"
NEEDS_SETUP = "needs setup"
UNSAFE = "unsafe"



# What a refusal is about, so a caller can accept exactly the ones the user accepted.
NO_FIRMWARE_IOMMU = "no-firmware-iommu"
ROOT_DISK_IN_GROUP = "root-disk-in-group"
MGMT_NIC_IN_GROUP = "mgmt-nic-in-group"
SHARED_GROUP = "shared-group"  # accepted by `host setup --accept-shared-group`
BOOT_VGA = "boot-vga"  # accepted by --yes


@dataclass(frozen=True)
class Refusal:
    kind: str
    reason: str
    fix: str
    overridable: bool = False  # True: a warning that --yes accepts

    def __str__(self) -> str:
        return self.reason

    def to_json(self) -> dict:
        return {"kind": self.kind, "reason": self.reason, "fix": self.fix,
                "overridable": self.overridable}


@dataclass(frozen=True)
class GpuVerdict:
    gpu: Gpu
    status: str  # ready / needs setup / unsafe
    missing: tuple[str, ...]  # what setup would have to do (needs setup)
    refusals: tuple[Refusal, ...]  # why it is unsafe
    warnings: tuple[Refusal, ...]  # what --yes must accept
    group_mates: tuple[PciDevice, ...]  # devices in its IOMMU group(s) that are not its own

    def to_json(self) -> dict:
        return {
            **self.gpu.to_json(),
            "verdict": self.status,
            "missing": list(self.missing),
            "refusals": [r.to_json() for r in self.refusals],
            "warnings": [w.to_json() for w in self.warnings],
            "group_mates": [d.to_json() for d in self.group_mates],
        }


def select_gpus(facts: HostFacts, selectors: Sequence[DeviceSelector],
                host: str = "the host") -> list[Gpu]:
    """The GPUs the user named (all of them when none are named), each once, in slot order."""
    gpus = facts.gpus
    if not selectors:
        return gpus
    known = ", ".join(g.slot for g in gpus) or "none"
    chosen: dict[str, Gpu] = {}
    for selector in selectors:
        matching = [d for d in facts.devices if selector.matches(d.address)]
        if not matching:
            raise NotFoundError(f"no PCI device {selector} on {host}",
                                f"the GPUs there are: {known}")
        gpu = next((g for g in gpus if g.slot == selector.slot), None)
        if gpu is None:
            device = matching[0]
            raise UsageError(
                f"{device.address} on {host} is not a GPU: {device.description or 'class'} "
                f"[{device.class_code}]",
                f"name a display-class device (class 03xx); the GPUs there are: {known}")
        chosen[gpu.slot] = gpu
    return [chosen[slot] for slot in sorted(chosen)]


def _describe(device: PciDevice | None, address: str) -> str:
    if device is None:
        return address
    what = device.description or f"class {device.class_code}"
    return f"{address} ({what} [{device.vendor_device}])"


def _no_firmware_iommu(facts: HostFacts) -> Refusal:
    table, fix = {
        "intel": ("DMAR", "enable VT-d (Intel Virtualization Technology for Directed I/O) "
                          "in the firmware setup"),
        "amd": ("IVRS", "enable AMD-Vi (SVM/IOMMU) in the firmware setup"),
    }.get(facts.cpu_vendor, ("DMAR or IVRS", "enable VT-d / AMD-Vi (SVM/IOMMU) in the firmware "
                                             "setup"))
    return Refusal(NO_FIRMWARE_IOMMU, f"the firmware exposes no IOMMU (no ACPI {table} table), "
                   "so the card cannot be isolated", f"{fix}, then run inspect again")


def _group_refusals(facts: HostFacts, gpu: Gpu, group: int) -> list[Refusal]:
    mates = [a for a in facts.group_members(group) if a not in gpu.addresses]
    refusals = []
    root = [a for a in mates if a in facts.root_disk_controllers]
    if root:
        refusals.append(Refusal(
            ROOT_DISK_IN_GROUP,
            f"IOMMU group {group} of {gpu.slot} holds the root disk's controller "
            f"{', '.join(_describe(facts.device(a), a) for a in root)}: passing the card "
            "through would take the host's root disk with it",
            "put the card in a slot whose IOMMU group holds nothing else, or the root disk on a "
            "controller outside this group"))
    nic = [a for a in mates if a in facts.mgmt_nic_addresses]
    if nic:
        refusals.append(Refusal(
            MGMT_NIC_IN_GROUP,
            f"IOMMU group {group} of {gpu.slot} holds the management NIC "
            f"{', '.join(_describe(facts.device(a), a) for a in nic)}"
            + (f" ({facts.mgmt_interface})" if facts.mgmt_interface else "")
            + ": passing the card through would cut the host off the network",
            "put the card in a slot whose IOMMU group holds nothing else, or manage the host "
            "through a NIC outside this group"))
    others = [a for a in mates if a not in root and a not in nic
              and not (facts.device(a) and facts.device(a).is_bridge)]
    if others:
        refusals.append(Refusal(
            SHARED_GROUP,
            f"{gpu.slot} shares IOMMU group {group} with devices that are not its functions: "
            f"{', '.join(_describe(facts.device(a), a) for a in others)}",
            "put the card in a slot whose IOMMU group holds only the card (a CPU-attached slot, "
            "or enable ACS in the firmware setup); a group is passed through whole, so to give "
            "these devices to vfio-pci with the card, accept it with --accept-shared-group"))
    return refusals


def _boot_vga_warning(facts: HostFacts, gpu: Gpu) -> Refusal:
    display = next((f for f in gpu.functions if f.boot_vga), gpu.display)
    others = [g for g in facts.gpus if g.slot != gpu.slot]
    only = " and the only display device" if not others else ""
    return Refusal(
        BOOT_VGA,
        f"{display.address} is the boot VGA device (the host's console{only}): bound to "
        "vfio-pci it no longer shows the host's console",
        "keep a way in that does not need it (SSH, a serial console or the BMC)"
        + ("; or make another GPU the primary display in the firmware setup" if others else "")
        + "; then confirm with --yes",
        overridable=True)


def gpu_verdict(facts: HostFacts, gpu: Gpu) -> GpuVerdict:
    refusals: list[Refusal] = []
    missing: list[str] = []

    if not facts.iommu_in_firmware and not facts.iommu_active:
        refusals.append(_no_firmware_iommu(facts))

    groups = gpu.groups if facts.iommu_active else ()
    for group in groups:
        refusals += _group_refusals(facts, gpu, group)
    mates = tuple(facts.device(a) or PciDevice(a, "", "") for group in groups
                  for a in facts.group_members(group) if a not in gpu.addresses)

    if not facts.iommu_active:
        params = kernel_params(facts)
        if params.add or params.remove:
            change = ", ".join([*(f"add {p}" for p in params.add),
                                *(f"remove {p}" for p in params.remove)])
            missing.append(f"the IOMMU is off: {change} on the kernel command line, then reboot")
        elif facts.iommu_in_firmware:
            missing.append("the IOMMU is off although the firmware describes one: check the "
                           "kernel log (dmesg | grep -i -e DMAR -e AMD-Vi)")
        missing.append("its IOMMU group is unknown while the IOMMU is off (inspect again "
                       "once it is on)")
    for function in gpu.functions:
        if function.driver != "vfio-pci":
            missing.append(f"{function.address} is on {function.driver or 'no driver'}, "
                           "not vfio-pci")
    for group in groups:
        if group not in facts.vfio_groups:
            missing.append(f"/dev/vfio/{group} does not exist")
    if facts.iommu_active and not gpu.groups:
        missing.append(f"{gpu.slot} is in no IOMMU group although the IOMMU is on")

    warnings = []
    ready = not refusals and not missing
    if gpu.is_boot_vga and not ready:
        warnings.append(_boot_vga_warning(facts, gpu))
    status = UNSAFE if refusals else NEEDS_SETUP if missing else READY
    return GpuVerdict(gpu, status, tuple(missing), tuple(refusals), tuple(warnings), mates)


def gpu_verdicts(facts: HostFacts, gpus: Iterable[Gpu]) -> list[GpuVerdict]:
    return [gpu_verdict(facts, gpu) for gpu in gpus]


def inspect_exit_code(verdicts: Sequence[GpuVerdict]) -> int:
    """0 all ready, 10 some need setup, 20 some unsafe, 3 no GPU at all."""
    if not verdicts:
        return EXIT_NOT_FOUND
    if any(v.status == UNSAFE for v in verdicts):
        return EXIT_REFUSED
    if any(v.status == NEEDS_SETUP for v in verdicts):
        return EXIT_NEEDS_SETUP
    return EXIT_OK
