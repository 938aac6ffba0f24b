"""The ``pve_sim`` pytest fixture: a fresh simulated Proxmox VE node per test.

It is made available to the whole test suite by tests/conftest.py (a ``pytest_plugins`` entry
in a non-root conftest is an error in pytest 8+, and it would not reach tests/proxmox anyway).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pvesim.server import PveSimulator


@pytest.fixture
def pve_sim() -> Iterator[PveSimulator]:
    """A started PveSimulator (node 'pve1', root@pam password, tokens gpuprov@pve!ci and
    root@pam!ci); stopped, and its temporary certificate removed, after the test."""
    with PveSimulator() as simulator:
        yield simulator
