"""What ``gpuprov host setup`` will ask the roles for, or why it refuses. No I/O.

The roles decide the exact file contents themselves (and show them in check mode); this module
decides which functions go to vfio-pci, how they are claimed, and whether setup may run at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from gpuprov.errors import Refused, UsageError
from gpuprov.facts.host import HostFacts
from gpuprov.facts.pci import Gpu
from gpuprov.plan.verdict import (
    BOOT_VGA,
    SHARED_GROUP,
    GpuVerdict,
)


class SetupRefused(Refused):
    """A GPU is unsafe to give to vfio-pci on this host; nothing was changed."""


@dataclass(frozen=True)
class SetupPlan:
    gpus: tuple[Gpu, ...]
    addresses: tuple[str, ...]  # every function vfio-pci must claim, in address order
    bind_mode: str  # "ids" or "address" (the roles' vfio_bind_mode)
    iommu_passthrough_mode: bool  # add iommu=pt (asked for by the user)
    accepted: frozenset[str]  # refusal kinds the user accepted (--accept-shared-group, --yes)
    reasons: tuple[str, ...]  # why, one sentence per decision
    ready: bool  # every GPU is already isolated and on vfio-pci: nothing to do

    def host_vars(self) -> dict:
        """The variables for ``playbooks/host_setup.yml``, as a user would pass them with -e."""
        return {
            "vfio_pci_addresses": list(self.addresses),
            "vfio_bind_mode": self.bind_mode,
            "iommu_passthrough_mode": self.iommu_passthrough_mode,
        }


def choose_gpus(facts: HostFacts, named: Sequence[Gpu], host: str) -> list[Gpu]:
    """The GPUs to set up: the ones named, or the host's only GPU; several need --gpu."""
    if named:
        return list(named)
    if len(facts.gpus) == 1:
        return list(facts.gpus)
    if not facts.gpus:
        raise UsageError(f"{host} has no GPU (display-class PCI device) to set up",
                         f"check the card is seated and visible: gpuprov host inspect {host}")
    raise UsageError(
        f"{host} has {len(facts.gpus)} GPUs: {', '.join(g.slot for g in facts.gpus)}",
        "name the one(s) to give to vfio-pci with --gpu; the host keeps the others")


def plan_setup(facts: HostFacts, verdicts: Sequence[GpuVerdict], *, host: str,
               accept_shared_group: bool = False, assume_yes: bool = False,
               iommu_passthrough_mode: bool = False) -> SetupPlan:
    """Refuse (SetupRefused) unless every chosen GPU is safe or its risk was accepted."""
    accepted = {SHARED_GROUP} if accept_shared_group else set()
    if assume_yes:
        accepted.add(BOOT_VGA)
    blocking = [(v, r) for v in verdicts for r in (*v.refusals, *v.warnings)
                if r.kind not in accepted]
    if blocking:
        lines = [r.reason for _, r in blocking]
        fixes = list(dict.fromkeys(r.fix for _, r in blocking))
        raise SetupRefused(
            f"not setting up {host}, nothing was changed:\n  " + "\n  ".join(lines),
            "\n  ".join(fixes))

    reasons: list[str] = []
    addresses = {a for v in verdicts for a in v.gpu.addresses}
    mates = sorted({d.address for v in verdicts for d in v.group_mates if not d.is_bridge})
    if mates:
        # A group is passed through whole: every endpoint in it must leave its host driver.
        addresses.update(mates)
        reasons.append(f"{', '.join(mates)} in the card's IOMMU group go to vfio-pci with it "
                       "(accepted with --accept-shared-group)")
    chosen = [facts.device(a) for a in sorted(addresses)]
    ids = {d.vendor_device for d in chosen if d}
    twins = sorted(d.address for d in facts.devices
                   if d.vendor_device in ids and d.address not in addresses)
    bind_mode = "address" if twins or mates else "ids"
    if twins:
        reasons.append(f"claimed by address (driver_override): {', '.join(twins)} carry the "
                       "same vendor:device ids and stay with the host")
    elif mates:
        reasons.append("claimed by address (driver_override), so that no other device with "
                       "the same ids is taken from the host")
    else:
        reasons.append(f"claimed by vendor:device id ({', '.join(sorted(ids))}): no other "
                       "device on the host has these ids")
    if not facts.iommu_active:
        reasons.append("the IOMMU groups are unknown while the IOMMU is off; they are checked "
                       "again after the reboot")
    if iommu_passthrough_mode and not facts.passthrough_mode:
        reasons.append("iommu=pt goes on the kernel command line (asked for with --iommu-pt)")
    plan = SetupPlan(tuple(v.gpu for v in verdicts), tuple(sorted(addresses)), bind_mode,
                     iommu_passthrough_mode, frozenset(accepted), tuple(reasons), ready=False)
    return dataclasses.replace(plan, ready=not unmet(plan, facts, verdicts))


def unmet(plan: SetupPlan, facts: HostFacts, verdicts: Sequence[GpuVerdict]) -> list[str]:
    """What is still wrong after setup, judged on freshly inspected ``facts``: empty when every
    planned function is on vfio-pci, every group node exists and no unaccepted risk remains."""
    problems = [r.reason for v in verdicts for r in v.refusals if r.kind not in plan.accepted]
    problems += [item for v in verdicts for item in v.missing]
    for address in plan.addresses:
        device = facts.device(address)
        driver = device.driver if device else "absent"
        if driver != "vfio-pci":
            problems.append(f"{address} is on {driver or 'no driver'}, not vfio-pci")
    if plan.iommu_passthrough_mode and not facts.passthrough_mode:
        problems.append("iommu=pt is not on the running kernel command line")
    return list(dict.fromkeys(problems))
