"""molecule's delegated driver on lab hosts: create, converge, idempotence, verify, destroy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]


# lab: the delegated driver itself. intel-grub, amd-systemd-boot: the iommu and vfio roles
# through playbooks/host_setup.yml, one reboot, testinfra, and an idempotence pass.
@pytest.mark.parametrize("scenario", ["lab", "intel-grub", "amd-systemd-boot"])
def test_molecule_scenario(lab_root, scenario):
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "GPUPROV_LAB_DIR": str(lab_root),
           "PATH": f"{bin_dir}:{os.environ['PATH']}", "ANSIBLE_FORCE_COLOR": "0"}
    result = subprocess.run([f"{bin_dir}/molecule", "test", "-s", "lab"], cwd=ROOT, env=env,
                            capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            timeout=1800, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert "idempotence" in output or scenario == "lab"
    assert not any((lab_root / "hosts").glob("*")), "the scenario left lab hosts behind"
