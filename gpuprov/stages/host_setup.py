"""``gpuprov host setup`` and ``host rollback``: inspect -> plan -> preview -> apply -> verify.

The changes themselves are ``playbooks/host_setup.yml`` and ``playbooks/host_rollback.yml``
(the roles ``iommu`` and ``vfio``), run exactly as ``ansible-playbook`` would run them; this
module adds the checks before, the preview (check mode with diffs) and the proof after.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpuprov import inventory as inventory_
from gpuprov.errors import GpuprovError
from gpuprov.plan import SetupPlan, choose_gpus, plan_setup, unmet
from gpuprov.stages import inspect
from gpuprov.transport.ansible import PlaybookResult, run_playbook

SETUP_PLAYBOOK = "host_setup.yml"
ROLLBACK_PLAYBOOK = "host_rollback.yml"

Report = Callable[[str, str], None]


class PlaybookFailed(GpuprovError):
    """The playbook failed on the host; what it reported is in the message."""

    def __init__(self, message: str, hint: str, result: PlaybookResult):
        super().__init__(message, hint)
        self.result = result  # what it changed before it failed


@dataclass(frozen=True)
class Target:
    host: str
    inventory: Path

    @classmethod
    def resolve(cls, host: str, inventory: Path | None) -> Target:
        inventory = inventory or inventory_.default_inventory()
        inventory_.resolve(host, inventory)  # an unknown host fails here, before Ansible runs
        return cls(host, inventory)

    def run(self, playbook: str, extravars: dict, *, check: bool,
            report: Report | None = None) -> PlaybookResult:
        result = run_playbook(playbook, inventory=self.inventory, limit=self.host,
                              extravars={"gpuprov_target": self.host, **extravars},
                              check=check, report=report)
        if not result.ok:
            what = "checking" if check else "applying"
            raise PlaybookFailed(
                f"playbooks/{playbook} failed on {self.host} while {what} the changes:\n  "
                + "\n  ".join(result.failures or [f"ansible-playbook exited {result.rc}"]),
                f"rerun it by hand to see every task: ansible-playbook -i {self.inventory} "
                f"playbooks/{playbook} --limit {self.host} -e @VARS -vv", result)
        return result


@dataclass
class Setup:
    """One ``host setup`` run, step by step, so the CLI can show and ask between the steps."""

    target: Target
    before: inspect.InspectResult
    plan: SetupPlan

    @classmethod
    def prepare(cls, host: str, *, inventory: Path | None, gpus: Sequence[str],
                accept_shared_group: bool, assume_yes: bool,
                iommu_passthrough_mode: bool) -> Setup:
        """Inspect and plan; raise (changing nothing) if the host must not be set up."""
        before = inspect.run(host, inventory=inventory, gpus=gpus)
        chosen = choose_gpus(before.facts, [v.gpu for v in before.verdicts] if gpus else [],
                             host)
        verdicts = [v for v in before.verdicts if v.gpu in chosen]
        plan = plan_setup(before.facts, verdicts, host=host,
                          accept_shared_group=accept_shared_group, assume_yes=assume_yes,
                          iommu_passthrough_mode=iommu_passthrough_mode)
        return cls(Target.resolve(host, inventory), before, plan)

    @property
    def extravars(self) -> dict:
        return self.plan.extravars(self.target.host)

    def preview(self) -> PlaybookResult:
        """What would change, with diffs (the playbook in check mode; nothing changes)."""
        return self.target.run(SETUP_PLAYBOOK, self.extravars, check=True)

    def apply(self, report: Report) -> PlaybookResult:
        """Change, reboot once if needed, verify on the host (the playbook's own checks)."""
        return self.target.run(SETUP_PLAYBOOK, self.extravars, check=False, report=report)

    def verify(self) -> inspect.InspectResult:
        """Inspect again, independently of the playbook: every planned function on vfio-pci,
        its group node present, no risk left that the user did not accept."""
        after = inspect.run(self.target.host, inventory=self.target.inventory,
                            gpus=[g.slot for g in self.plan.gpus])
        problems = unmet(self.plan, after.facts, after.verdicts)
        if problems:
            raise GpuprovError(
                f"{self.target.host} is not ready after setup: " + "; ".join(problems),
                f"see gpuprov host inspect {self.target.host}; undo with "
                f"gpuprov host rollback {self.target.host}")
        return after


@dataclass
class Rollback:
    target: Target

    @classmethod
    def prepare(cls, host: str, *, inventory: Path | None) -> Rollback:
        return cls(Target.resolve(host, inventory))

    def preview(self) -> PlaybookResult:
        return self.target.run(ROLLBACK_PLAYBOOK, {}, check=True)

    def apply(self, report: Report) -> PlaybookResult:
        return self.target.run(ROLLBACK_PLAYBOOK, {}, check=False, report=report)

    def verify(self) -> inspect.InspectResult:
        return inspect.run(self.target.host, inventory=self.target.inventory)
