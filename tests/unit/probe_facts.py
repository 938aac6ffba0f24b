"""Probe captures as HostFacts, and the one-fact variations the planning tests need."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gpuprov.facts import parse_host_facts
from gpuprov.facts.host import HostFacts

FIXTURES = Path(__file__).parent / "fixtures" / "probe"


def load(name: str) -> HostFacts:
    return parse_host_facts((FIXTURES / f"{name}.txt").read_text())


def regroup(facts: HostFacts, address: str, group: int) -> HostFacts:
    """``facts`` with ``address`` moved into IOMMU group ``group``."""
    groups = {g: tuple(a for a in members if a != address)
              for g, members in facts.iommu_groups.items()}
    groups[group] = tuple(sorted((*groups.get(group, ()), address)))
    devices = tuple(dataclasses.replace(d, iommu_group=group) if d.address == address else d
                    for d in facts.devices)
    return dataclasses.replace(facts, iommu_groups={g: m for g, m in groups.items() if m},
                               devices=devices)
