"""What the kernel command line needs for the IOMMU, and nothing more.

The rules live in the iommu role's filter plugin
(``gpuprov/ansible/roles/iommu/filter_plugins/kernel_cmdline.py``), which the role runs itself:
what ``host inspect`` plans here is what ``host setup`` does (one source of truth).
"""

from __future__ import annotations

from dataclasses import dataclass

from gpuprov.ansible.roles.iommu.filter_plugins.kernel_cmdline import iommu_cmdline_change
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


def kernel_params(facts: HostFacts, *, passthrough: bool = False) -> KernelParams:
    """The parameters to add to and remove from the configured command line (the running one
    when the boot loader's configuration is unknown)."""
    configured = facts.configured_cmdline.cmdline
    cmdline, checked = (configured, "configured") if configured is not None else \
        (facts.cmdline, "running")
    change = iommu_cmdline_change(
        cmdline.text, vendor=facts.cpu_vendor,
        kernel_enables_intel_iommu=facts.kernel_enables_intel_iommu_by_default,
        passthrough=passthrough, kernel=facts.kernel)
    return KernelParams(tuple(change["add"]), tuple(change["remove"]), tuple(change["reasons"]),
                        checked)
