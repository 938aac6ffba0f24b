"""What every hypervisor backend takes and returns.

A backend receives the user's request already validated for shape (a parsed PCI address,
positive sizes) and does everything else itself: connect, check, plan, change, read back.
It reports progress through ``report(subject, message)`` and asks before converting an
existing VM through ``confirm(question, changes)``; it never prints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gpuprov.errors import UsageError
from gpuprov.facts.pci import DeviceSelector

Report = Callable[[str, str], None]
# confirm("convert VM 101 for passthrough", ["machine: pc -> q35", ...]) -> True to go ahead
Confirm = Callable[[str, Sequence[str]], bool]


@dataclass(frozen=True)
class VmShape:
    """The VM to create when no existing one is named (each backend maps these to its API)."""

    name: str | None = None
    cores: int = 4
    memory_mib: int = 8192
    disk_gib: int = 32
    storage: str | None = None  # Proxmox storage / ESXi datastore; None: the backend's default
    iso: str | None = None  # installer ISO to attach, as the hypervisor names it


@dataclass(frozen=True)
class PassthroughRequest:
    host: str  # inventory host name of the hypervisor (node, ESXi host / vCenter, libvirt host)
    gpu: DeviceSelector  # a slot (all its functions) or one function
    inventory: Path | None = None  # None: the lab's inventory
    vm: str | None = None  # an existing VM (id or name) to give the card to; None: create one
    vmid: int | None = None  # Proxmox: the new VM's id; None: the next free one
    shape: VmShape = field(default_factory=VmShape)
    mapping: str | None = None  # Proxmox: the PCI resource mapping to use or create
    x_vga: bool = False  # the card is the VM's primary display
    hide_hypervisor: bool = False  # ESXi: hypervisor.cpuid.v0=FALSE (consumer cards)
    start: bool = True
    keep_on_failure: bool = False  # keep a half-made VM for debugging instead of removing it
    options: dict[str, str] = field(default_factory=dict)  # backend-specific (datacenter, ...)


@dataclass
class PassthroughResult:
    hypervisor: str
    host: str
    vm_id: str
    vm_name: str
    created: bool  # False: an existing VM was given the card
    started: bool
    devices: list[str]  # what was attached, in the hypervisor's own words (hostpci0=...)
    settings: dict[str, str]  # the VM settings that matter, read back from the hypervisor
    notes: list[str] = field(default_factory=list)  # which path was taken, and why

    def to_json(self) -> dict:
        return {
            "hypervisor": self.hypervisor, "host": self.host, "vm_id": self.vm_id,
            "vm_name": self.vm_name, "created": self.created, "started": self.started,
            "devices": self.devices, "settings": self.settings, "notes": self.notes,
        }


class Backend(Protocol):
    name: str

    def passthrough(self, request: PassthroughRequest, report: Report,
                    confirm: Confirm) -> PassthroughResult:
        """Create (or convert) the VM and give it the card; raise GpuprovError on refusal."""
        ...


def refuse_flags(backend: str, flags: Sequence[tuple[object, str, str]]) -> None:
    """Flags of other backends are refused, not silently ignored: each ``(value, flag, hint)``
    whose value was given (not None) ends the run before anything is contacted."""
    for given, flag, hint in flags:
        if given is not None:
            raise UsageError(f"{flag} does not apply to {backend}", hint)
