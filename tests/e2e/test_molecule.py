"""molecule's delegated driver on lab hosts: create, converge, idempotence, verify, destroy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm(minutes=10)

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("intel-grub", "amd-systemd-boot")


# The iommu and vfio roles through playbooks/host_setup.yml on a lab host made by the delegated
# driver (molecule/resources): one reboot, testinfra, and an idempotence pass. One test per
# scenario, each on one lab host: the suite's two streams (tests/conftest.py) run them beside
# other tests. Run together, the two scenarios' two hosts beside a third test's host overran
# these two-core machines (the scenarios then took more than 1800 s).
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario, lab_root, tmp_path):
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "GPUPROV_LAB_DIR": str(lab_root),
           "PATH": f"{bin_dir}:{os.environ['PATH']}", "ANSIBLE_FORCE_COLOR": "0"}
    log = tmp_path / f"{scenario}.log"
    with log.open("w") as out:  # a file, not a pipe: nothing waits on a full pipe
        process = subprocess.Popen(
            [f"{bin_dir}/molecule", "test", "-s", scenario], cwd=ROOT, env=env,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            process.wait(timeout=1800)
        finally:
            if process.poll() is None:
                process.kill()
    output = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text())  # colour, if any
    assert process.returncode == 0, f"{scenario}:\n{output[-8000:]}"
    # molecule fails the run itself on any changed task in its second converge; this checks
    # that the pass ran at all and came back clean.
    assert re.search(rf"{scenario}\W+idempotence", output), output[-8000:]
    assert re.search(r"ok=\d+\s+changed=0\s+unreachable=0\s+failed=0", output), output[-8000:]
    assert not (lab_root / "hosts" / scenario).exists(), "the scenario left its lab host behind"
