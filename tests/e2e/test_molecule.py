"""molecule's delegated driver on lab hosts: create, converge, idempotence, verify, destroy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]


def test_molecule_lab_scenario(lab_root):
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "GPUPROV_LAB_DIR": str(lab_root),
           "PATH": f"{bin_dir}:{os.environ['PATH']}", "ANSIBLE_FORCE_COLOR": "0"}
    result = subprocess.run([f"{bin_dir}/molecule", "test", "-s", "lab"], cwd=ROOT, env=env,
                            capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            timeout=1800, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert "molecule-lab" in output
    assert not (lab_root / "hosts/molecule-lab").exists()
