"""What the kernel command line needs for the IOMMU, and nothing more.

- Intel: ``intel_iommu=on`` only when the kernel does not turn the IOMMU on by itself
  (``CONFIG_INTEL_IOMMU_DEFAULT_ON``, or Debian's ``..._DEFAULT_ON_INTGPU_OFF``; upstream and
  Proxmox VE from kernel 6.8).
- AMD: nothing. ``amd_iommu=on`` is not a valid switch; the AMD IOMMU is on whenever the firmware
  describes one (IVRS), so only an explicit ``amd_iommu=off`` is in the way.
- ``iommu=pt`` only when asked: it trades isolation of host devices for host DMA speed.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpuprov.facts.cmdline import KernelCmdline
from gpuprov.facts.host import HostFacts


@dataclass(frozen=True)
class KernelParams:
    add: tuple[str, ...]
    remove: tuple[str, ...]
    reasons: tuple[str, ...]  # one sentence per decision, changes or not
    checked: str  # which command line was checked: "configured" or "running"

    @property
    def changes(self) -> bool:
        return bool(self.add or self.remove)

    def to_json(self) -> dict:
        return {"add": list(self.add), "remove": list(self.remove),
                "reasons": list(self.reasons), "checked": self.checked}


def _off(cmdline: KernelCmdline, key: str) -> list[str]:
    return [f"{key}={v}" for v in cmdline.values(key) if v is not None and "off" in v.split(",")]


def kernel_params(facts: HostFacts, *, passthrough: bool = False) -> KernelParams:
    """The parameters to add to and remove from the configured command line (the running one
    when the boot loader's configuration is unknown)."""
    configured = facts.configured_cmdline.cmdline
    cmdline, checked = (configured, "configured") if configured is not None else \
        (facts.cmdline, "running")
    add: list[str] = []
    remove: list[str] = []
    reasons: list[str] = []

    blocking = _off(cmdline, "iommu")
    if blocking:
        remove += blocking
        reasons.append("iommu=off turns every IOMMU off")

    if facts.cpu_vendor == "intel":
        intel_off = _off(cmdline, "intel_iommu")
        if intel_off:
            remove += intel_off
            add.append("intel_iommu=on")
            reasons.append("intel_iommu=off is set: replace it with intel_iommu=on")
        elif cmdline.has("intel_iommu", "on"):
            reasons.append("intel_iommu=on is already set")
        elif facts.kernel_enables_intel_iommu_by_default:
            reasons.append(f"kernel {facts.kernel} turns the Intel IOMMU on by default: "
                           "intel_iommu=on is not needed")
        else:
            add.append("intel_iommu=on")
            why = "does not turn" if facts.kernel_enables_intel_iommu_by_default is False \
                else "may not turn (its config was not readable)"
            reasons.append(f"kernel {facts.kernel} {why} the Intel IOMMU on by default")
    elif facts.cpu_vendor == "amd":
        amd_off = _off(cmdline, "amd_iommu")
        if amd_off:
            remove += amd_off
            reasons.append("amd_iommu=off is set: remove it (there is no amd_iommu=on)")
        else:
            reasons.append("AMD: the IOMMU is on whenever the firmware describes it (IVRS); "
                           "amd_iommu=on is not a valid switch")

    if passthrough:
        if cmdline.get("iommu") == "pt":
            reasons.append("iommu=pt is already set")
        else:
            add.append("iommu=pt")
            reasons.append("iommu=pt asked for: host devices skip DMA translation (faster host "
                           "I/O, less isolation between host devices)")
    return KernelParams(tuple(add), tuple(remove), tuple(reasons), checked)
