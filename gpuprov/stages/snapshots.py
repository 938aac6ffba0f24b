"""Stages whose result a lab host can start from: ``gpuprov lab up NAME --after STAGE``.

A stage snapshot is a checkpoint of a lab host taken right after the stage ran on it for real
and passed its own verification. Its cache key covers the machine, and the digest of every file
that makes the change (playbook, roles, and the planner that computes the variables) and the
request it ran with, so a changed role or variable is a miss and the stage runs again.

A stage's own tests always run it for real; only later stages' tests start from its snapshot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

Report = Callable[[str, str], None]


PACKAGE = Path(__file__).resolve().parents[1]


def digest_sources(patterns: tuple[str, ...], root: Path = PACKAGE) -> dict[str, str]:
    """sha256 of every file the glob ``patterns`` match under ``root`` (the installed package),
    by relative path."""
    digests = {}
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            if path.is_file() and "__pycache__" not in path.parts:
                digests[str(path.relative_to(root))] = \
                    hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return digests


@dataclass(frozen=True)
class HostSetupSnapshot:
    """``host setup --yes`` with its defaults (every GPU, no shared groups, no iommu=pt)."""

    name: str = "host-setup"
    sources: tuple[str, ...] = (
        "ansible/playbooks/host_setup.yml", "ansible/roles/iommu/**/*",
        "ansible/roles/vfio/**/*", "ansible/roles/host_lock/**/*",
        "ansible/roles/rollback_record/**/*", "ansible/ansible.cfg",
        "plan/**/*", "facts/**/*", "stages/host_setup.py", "stages/engine.py",
    )
    request: dict = field(default_factory=lambda: {
        "gpus": [], "accept_shared_group": False, "iommu_passthrough_mode": False})

    def inputs(self) -> dict:
        return {"files": digest_sources(self.sources), "request": self.request}

    def run(self, lab, host: str, report: Report) -> dict:
        from gpuprov.errors import GpuprovError
        from gpuprov.stages import engine
        from gpuprov.stages.host_setup import HostSetup

        stage = HostSetup(gpus=self.request["gpus"], assume_yes=True,
                          accept_shared_group=self.request["accept_shared_group"],
                          iommu_passthrough_mode=self.request["iommu_passthrough_mode"])
        [outcome] = engine.run(stage, host, lab.inventory_file, engine.Request(yes=True),
                               _Reporting(host, report)).outcomes
        if outcome.status not in (engine.DONE, engine.NOTHING_TO_DO):
            raise GpuprovError(f"host setup of {host} for its snapshot: {outcome.message}",
                               outcome.hint)
        report(host, "host setup: verified, every planned function on vfio-pci")
        after = outcome.verified or outcome.gathered
        return {"variables": outcome.plan.host_vars(),
                "verdicts": {v.gpu.slot: v.status for v in after.verdicts}}


@dataclass(frozen=True)
class _Reporting:
    """The engine's Ui for a snapshot: confirmed in advance, progress as lab messages."""

    host: str
    report: Report

    def planned(self, outcomes) -> None:
        pass

    def changes(self, result, heading: str) -> None:
        pass

    def confirm(self, hosts) -> None:
        pass

    def progress(self):
        from contextlib import nullcontext

        return nullcontext(lambda _host, task: self.report(self.host, f"host setup: {task}"))


STAGES = {stage.name: stage for stage in (HostSetupSnapshot(),)}
