"""``gpuprov host setup`` and ``host rollback``, as stages of ``gpuprov.stages.engine``.

The changes themselves are ``playbooks/host_setup.yml`` and ``playbooks/host_rollback.yml``
(the roles ``iommu`` and ``vfio``), run exactly as ``ansible-playbook`` would run them; a
stage adds what is checked before (inspect, plan) and the proof after (inspect again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gpuprov.errors import GpuprovError
from gpuprov.plan import SetupPlan, choose_gpus, plan_setup, unmet
from gpuprov.stages import inspect

SETUP_PLAYBOOK = "host_setup.yml"
ROLLBACK_PLAYBOOK = "host_rollback.yml"


@dataclass(frozen=True)
class HostSetup:
    """IOMMU on and the GPU on vfio-pci: inspect, plan per host, the playbook, inspect again."""

    gpus: Sequence[str] = ()  # --gpu selectors, for every host
    accept_shared_group: bool = False
    assume_yes: bool = False  # accepts the boot-VGA risk
    iommu_passthrough_mode: bool = False
    playbook: str = SETUP_PLAYBOOK

    def gather(self, host: str, inventory: Path) -> inspect.InspectResult:
        return inspect.run(host, inventory=inventory, gpus=self.gpus)

    def plan(self, host: str, gathered: inspect.InspectResult) -> SetupPlan:
        facts = gathered.facts
        chosen = choose_gpus(facts, [v.gpu for v in gathered.verdicts] if self.gpus else [],
                             host)
        return plan_setup(facts, [v for v in gathered.verdicts if v.gpu in chosen], host=host,
                          accept_shared_group=self.accept_shared_group,
                          assume_yes=self.assume_yes,
                          iommu_passthrough_mode=self.iommu_passthrough_mode)

    def host_vars(self, plan: SetupPlan) -> dict:
        return plan.host_vars()

    def has_work(self, plan: SetupPlan) -> bool:
        # A ready host still gets a preview: its files may have drifted from what it runs.
        return not plan.ready

    def unchanged(self, host: str, plan: SetupPlan) -> str:
        if not plan.ready:
            raise GpuprovError(
                f"{host}'s configuration is already in place but not active: it has not "
                "booted into it",
                f"reboot {host}, then check with: gpuprov host inspect {host}")
        return f"{host} is ready and its configuration matches; no change, no reboot"

    def failed_unchanged_hint(self, host: str) -> str:
        # Nothing needed changing, yet the host is not ready: it has not booted into its
        # configuration (the playbook's verification says what is missing).
        return (f"if {host}'s configuration is in place and only the reboot is missing, reboot "
                f"it, then check with: gpuprov host inspect {host}")

    def verify(self, host: str, inventory: Path, plan: SetupPlan) -> inspect.InspectResult:
        """Inspect again, independently of the playbook: every planned function on vfio-pci,
        its group node present, no risk left that the user did not accept."""
        after = inspect.run(host, inventory=inventory, gpus=[g.slot for g in plan.gpus])
        problems = unmet(plan, after.facts, after.verdicts)
        if problems:
            raise GpuprovError(
                f"{host} is not ready after setup: " + "; ".join(problems),
                f"see gpuprov host inspect {host}; undo with gpuprov host rollback {host}")
        return after


@dataclass(frozen=True)
class HostRollback:
    """Undo host setup from what the roles recorded on the host; inspect after."""

    playbook: str = ROLLBACK_PLAYBOOK

    def gather(self, host: str, inventory: Path) -> None:
        # The records are on the host, and the playbook reads them: its preview is the plan.
        return None

    def plan(self, host: str, gathered: None) -> dict:
        return {}

    def host_vars(self, plan: dict) -> dict:
        return plan

    def has_work(self, plan: dict) -> None:
        return None

    def unchanged(self, host: str, plan: dict) -> str:
        return f"{host} has no gpuprov changes to undo"

    def failed_unchanged_hint(self, host: str) -> None:
        return None

    def verify(self, host: str, inventory: Path, plan: dict) -> inspect.InspectResult:
        return inspect.run(host, inventory=inventory)
