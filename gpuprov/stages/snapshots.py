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

from gpuprov.transport.ansible import PROJECT_ROOT

Report = Callable[[str, str], None]


def digest_sources(patterns: tuple[str, ...], root: Path = PROJECT_ROOT) -> dict[str, str]:
    """sha256 of every file the glob ``patterns`` match under ``root``, by relative path."""
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
        "playbooks/host_setup.yml", "roles/iommu/**/*", "roles/vfio/**/*",
        "gpuprov/plan/**/*", "gpuprov/facts/**/*", "gpuprov/stages/host_setup.py",
    )
    request: dict = field(default_factory=lambda: {
        "gpus": [], "accept_shared_group": False, "iommu_passthrough_mode": False})

    def inputs(self) -> dict:
        return {"files": digest_sources(self.sources), "request": self.request}

    def run(self, lab, host: str, report: Report) -> dict:
        from gpuprov.stages.host_setup import Setup

        setup = Setup.prepare(host, inventory=lab.inventory_file, assume_yes=True,
                              **self.request)
        report(host, f"host setup: {len(setup.plan.gpus)} GPU(s) to vfio-pci")
        setup.apply(lambda _host, message: report(host, f"host setup: {message}"))
        after = setup.verify()
        report(host, "host setup: verified, every planned function on vfio-pci")
        return {"variables": setup.extravars,
                "verdicts": {v.gpu.slot: v.status for v in after.verdicts}}


STAGES = {stage.name: stage for stage in (HostSetupSnapshot(),)}
