"""ESXi / vCenter passthrough decisions, pure: host facts and a VM's settings in, changes out.

The pyVmomi layer (``gpuprov.hypervisors.esxi``) reads what vSphere reports into the plain
values here and turns the changes back into a ``VirtualMachineConfigSpec``; everything that
decides *what* to change, or to refuse, lives in this module so it can be tested without vSphere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gpuprov.errors import NotConfirmed, NotFoundError, Refused, UsageError
from gpuprov.facts.pci import DeviceSelector, slot_of

MMIO_ENABLE = "pciPassthru.use64bitMMIO"
MMIO_SIZE = "pciPassthru.64bitMMIOSizeGB"
HIDE_HYPERVISOR = "hypervisor.cpuid.v0"
# The first virtual hardware version with Dynamic DirectPath (vSphere 7.0).
DYNAMIC_DIRECTPATH_MIN_HW = 17
MIN_MMIO_PER_GPU_GIB = 16

# Frame-buffer size of data-centre and workstation cards by PCI vendor:device, for the MMIO
# window; any other card needs --option gpu_memory=SIZE.
GPU_MEMORY_GIB = {
    "10de:1eb8": 16,  # Tesla T4
    "10de:20b5": 80,  # A100 80GB PCIe
    "10de:20f1": 40,  # A100 40GB PCIe
    "10de:2230": 48,  # RTX A6000
    "10de:2235": 48,  # A40
    "10de:2236": 24,  # A10
    "10de:27b8": 24,  # L4
}


# vSphere's own limits, checked before any API call (vSphere 8 configuration maximums: 768
# vCPUs and 24 TB per VM; memoryMB a multiple of 4; names of up to 80 characters).
MAX_CORES = 768
MEMORY_MIB = (4, 24 * 2**20)
MAX_NAME = 80


def check_shape(name: str | None, cores: int, memory_mib: int) -> None:
    if name is not None and not 1 <= len(name) <= MAX_NAME:
        raise UsageError(f"--name is {len(name)} characters; vSphere takes 1 to {MAX_NAME}",
                         "give a shorter --name")
    if not 1 <= cores <= MAX_CORES:
        raise UsageError(f"--cores {cores} is more than vSphere's {MAX_CORES} vCPUs per VM",
                         f"give --cores 1 to {MAX_CORES}")
    low, high = MEMORY_MIB
    if not low <= memory_mib <= high or memory_mib % 4:
        raise UsageError(f"--memory {memory_mib} MiB is not a VM memory vSphere takes: a "
                         f"multiple of 4 MiB from {low} MiB to {high // 2**20} TiB",
                         "for example --memory 8G")


class EsxiRefused(Refused):
    """A vSphere safety check said no; nothing was changed."""


@dataclass(frozen=True)
class PciFunction:
    """One PCI function of an ESXi host with its passthrough state (``HostPciPassthruInfo``)."""

    address: str  # 0000:26:00.0, as ESXi names it
    vendor_id: int
    device_id: int
    class_id: int
    name: str
    capable: bool
    enabled: bool
    active: bool  # enabled and in effect (ESXi: after the host rebooted, where it needs one)

    @property
    def ids(self) -> str:
        return f"{self.vendor_id:04x}:{self.device_id:04x}"

    @property
    def is_display(self) -> bool:
        return self.class_id >> 8 == 0x03

    @property
    def state(self) -> str:
        if not self.capable:
            return "not capable"
        if self.active:
            return "active"
        return "enabled, needs host reboot" if self.enabled else "disabled"

    def to_json(self) -> dict:
        return {"address": self.address, "ids": self.ids, "name": self.name,
                "class": f"{self.class_id:04x}", "capable": self.capable,
                "enabled": self.enabled, "active": self.active, "state": self.state}


def card_functions(selector: DeviceSelector, functions: Iterable[PciFunction],
                   host: str, target: str | None = None) -> list[PciFunction]:
    """The functions the user named: one function, or every function of the slot. ``target``:
    how the hints name the host on the command line (``--host esx1 -o esx_host=H0``)."""
    chosen = sorted((f for f in functions if selector.matches(f.address)),
                    key=lambda f: f.address)
    if not chosen:
        raise NotFoundError(f"host {host} has no PCI device {selector}",
                            f"list its devices with: gpuprov vm devices --hypervisor esxi "
                            f"{target or '--host ' + host}")
    return chosen


def siblings(chosen: Sequence[PciFunction], functions: Iterable[PciFunction]) -> list[PciFunction]:
    """Every function sharing a slot with ``chosen``: ESXi passes a card's functions together."""
    slots = {slot_of(f.address) for f in chosen}
    return sorted((f for f in functions if slot_of(f.address) in slots), key=lambda f: f.address)


@dataclass(frozen=True)
class EnablePlan:
    enable: tuple[str, ...]  # addresses to switch on (UpdatePassthruConfig)
    already: tuple[str, ...]  # enabled before


def plan_enable(chosen: Sequence[PciFunction], functions: Iterable[PciFunction],
                host: str) -> EnablePlan:
    """Enable the card and its sibling functions; refuse if any of them cannot pass through."""
    group = siblings(chosen, functions)
    incapable = [f.address for f in group if not f.capable]
    if incapable:
        raise EsxiRefused(
            f"{', '.join(incapable)} on host {host} cannot be passed through "
            "(ESXi reports it as not passthrough-capable)",
            "check that VT-d/AMD-Vi (IOMMU) is enabled in the server's firmware; a device "
            "ESXi itself uses (boot disk, management NIC) can never be passed through")
    return EnablePlan(enable=tuple(f.address for f in group if not f.enabled),
                      already=tuple(f.address for f in group if f.enabled))


def reboot_needed(functions: Iterable[PciFunction]) -> list[str]:
    """Devices whose passthrough setting waits for a host reboot (enabled != active)."""
    return [f.address for f in functions if f.capable and f.enabled != f.active]


def check_usable(chosen: Sequence[PciFunction], host: str, target: str | None = None) -> None:
    """Refuse a card that is not active for passthrough, saying how to get it there."""
    target = target or f"--host {host}"
    for function in chosen:
        if not function.capable:
            raise EsxiRefused(f"{function.address} on host {host} is not passthrough-capable",
                              "check that VT-d/AMD-Vi is enabled in the server's firmware")
        if not function.enabled:
            raise EsxiRefused(
                f"passthrough is not enabled for {function.address} on host {host}",
                f"enable it (and its sibling functions) with: gpuprov vm devices --hypervisor "
                f"esxi {target} --enable {function.address}")
        if not function.active:
            raise EsxiRefused(
                f"passthrough for {function.address} on host {host} is enabled but not yet "
                "active: the host needs a reboot",
                f"reboot it (maintenance mode first) with: gpuprov vm devices --hypervisor esxi "
                f"{target} --reboot")


def mmio_size_gib(gpu_memory_gib: Sequence[float]) -> int:
    """``pciPassthru.64bitMMIOSizeGB`` for GPUs with these frame-buffer sizes: a power of two,
    at least twice their total memory and at least 16 GiB per GPU."""
    if not gpu_memory_gib:
        raise ValueError("no GPUs to size the MMIO window for")
    if any(size <= 0 for size in gpu_memory_gib):
        raise ValueError(f"GPU memory sizes must be positive: {list(gpu_memory_gib)}")
    need = max(2 * sum(gpu_memory_gib), MIN_MMIO_PER_GPU_GIB * len(gpu_memory_gib))
    size = 1
    while size < need:
        size *= 2
    return size


def gpu_memory_gib(ids: str, override_gib: float | None = None) -> float:
    """The card's frame buffer: the user's --option gpu_memory, else the known cards' table."""
    if override_gib is not None:
        return override_gib
    if ids in GPU_MEMORY_GIB:
        return GPU_MEMORY_GIB[ids]
    raise UsageError(f"gpuprov does not know how much memory the GPU {ids} has, which sizes "
                     "the VM's 64-bit MMIO window",
                     "give it with --option gpu_memory=SIZE (for example gpu_memory=48G)")


# The usual sizing rule for a GPU VM: at least 1.5 times the memory of its GPUs, so that the
# guest driver can stage and map what it moves to the cards.
VM_MEMORY_PER_GPU_MEMORY = 1.5


def memory_warning(vm: str, vm_memory_mib: int, gpu_memory_gib: Sequence[float]) -> str | None:
    """A warning when the VM has less memory than 1.5 x its GPUs' memory, with the numbers."""
    gpus_mib = sum(gpu_memory_gib) * 1024
    wanted = int(VM_MEMORY_PER_GPU_MEMORY * gpus_mib)
    if vm_memory_mib >= wanted:
        return None
    return (f"warning: VM {vm} has {vm_memory_mib} MiB of memory, less than "
            f"{VM_MEMORY_PER_GPU_MEMORY:g} x its GPUs' {gpus_mib:.0f} MiB = {wanted} MiB; "
            f"give it --memory {-(-wanted // 1024)}G or more")


def choose_backing(hw_version: int, dynamic_offered: bool, static_offered: bool,
                   preference: str = "auto") -> str:
    """``dynamic`` (Dynamic DirectPath: the device matched by vendor/device at power-on) when the
    host offers it and the VM's hardware is new enough, else ``static`` (DirectPath by id)."""
    if preference not in ("auto", "static", "dynamic"):
        raise UsageError(f"directpath={preference!r} is not a choice",
                         "give directpath=auto, static or dynamic")
    dynamic_ok = dynamic_offered and hw_version >= DYNAMIC_DIRECTPATH_MIN_HW
    if preference == "dynamic" and not dynamic_ok:
        why = (f"the VM's hardware version is {hw_version} (needs "
               f"{DYNAMIC_DIRECTPATH_MIN_HW} or later)" if dynamic_offered
               else "the host does not offer the device for Dynamic DirectPath")
        raise EsxiRefused(f"Dynamic DirectPath is not possible: {why}",
                          "use directpath=auto or static, or upgrade the VM's hardware")
    if preference == "dynamic" or (preference == "auto" and dynamic_ok):
        return "dynamic"
    if not static_offered:
        raise EsxiRefused("the host does not offer the device for DirectPath passthrough",
                          "check its state with: gpuprov vm devices --hypervisor esxi")
    return "static"


@dataclass(frozen=True)
class VmSettings:
    """What matters about a VM for passthrough, as read from (or to be written to) vSphere."""

    firmware: str = "bios"
    secure_boot: bool | None = None  # None: never set (the VM follows its guest OS default)
    memory_locked: bool = False  # memoryReservationLockedToMax
    extra_config: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, str]:
        shown = {"firmware": self.firmware,
                 "secure_boot": {True: "on", False: "off", None: "(unset)"}[self.secure_boot],
                 "memory_reservation_locked_to_max": "yes" if self.memory_locked else "no"}
        shown.update({k: v for k, v in sorted(self.extra_config.items())
                      if k.startswith(("pciPassthru", "hypervisor.cpuid"))})
        return shown


@dataclass(frozen=True)
class Change:
    setting: str  # firmware, secure_boot, memory_locked or an extraConfig key
    old: str | bool | None
    new: str | bool | None

    def __str__(self) -> str:
        def show(value):
            return "(unset)" if value is None else value
        return f"{self.setting}: {show(self.old)} -> {show(self.new)}"

    def reverse(self) -> Change:
        return Change(self.setting, self.new, self.old)


def desired_settings(current: VmSettings, mmio_gib: int, hide_hypervisor: bool) -> VmSettings:
    """EFI without secure boot, all memory reserved, a 64-bit MMIO window of at least
    ``mmio_gib`` (an existing larger one is kept), the hypervisor hidden only when asked."""
    extra = {MMIO_ENABLE: "TRUE"}
    existing = current.extra_config.get(MMIO_SIZE, "")
    extra[MMIO_SIZE] = str(max(mmio_gib, int(existing) if existing.isdigit() else 0))
    if hide_hypervisor:
        extra[HIDE_HYPERVISOR] = "FALSE"
    return VmSettings(firmware="efi", secure_boot=False, memory_locked=True, extra_config=extra)


def plan_changes(current: VmSettings, desired: VmSettings) -> list[Change]:
    """The settings that differ; extraConfig keys only ever added or changed, never dropped."""
    changes = [Change(name, getattr(current, name), getattr(desired, name))
               for name in ("firmware", "secure_boot", "memory_locked")
               if getattr(current, name) != getattr(desired, name)]
    changes += [Change(key, current.extra_config.get(key), value)
                for key, value in desired.extra_config.items()
                if current.extra_config.get(key) != value]
    return changes


def conversion_question(vm: str, changes: Sequence[Change]) -> str | None:
    """The question to ask before converting an existing VM, or None when nothing needs a yes.
    Switching firmware is what can leave an installed guest unbootable, so that one asks."""
    if any(c.setting == "firmware" for c in changes):
        return f"convert VM {vm} to EFI firmware for passthrough (its guest may need reinstalling)"
    return None


def check_powered_off(vm: str, power_state: str) -> None:
    if power_state != "poweredOff":
        raise EsxiRefused(f"VM {vm} is {power_state}: gpuprov adds passthrough devices and "
                          "changes firmware only on a powered-off VM",
                          "shut it down first, then run this again")


def check_converted(vm: str, current: VmSettings, confirmed: bool | None) -> None:
    """Refuse a BIOS VM the user did not agree to convert (``confirmed`` None: nothing asked)."""
    if confirmed is False:
        raise NotConfirmed(
            f"VM {vm} boots with {current.firmware.upper()} firmware; passthrough needs EFI, "
            "and switching can leave its installed guest unbootable",
            "convert it with --convert (or --yes), or create a new VM instead of --vm")


def plan_new(desired: VmSettings) -> list[Change]:
    """Every setting of a VM being created, written explicitly rather than left to defaults."""
    return [Change(name, None, getattr(desired, name))
            for name in ("firmware", "secure_boot", "memory_locked")] + \
        [Change(key, None, value) for key, value in desired.extra_config.items()]


def restore_changes(now: VmSettings, before: VmSettings) -> list[Change]:
    """What puts a VM's settings back as they were (an extraConfig key it lacked is removed)."""
    changes = plan_changes(now, before)
    changes += [Change(key, value, None) for key, value in now.extra_config.items()
                if key not in before.extra_config]
    return changes
