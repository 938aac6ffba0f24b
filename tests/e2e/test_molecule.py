"""molecule's delegated driver on lab hosts: create, converge, idempotence, verify, destroy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("intel-grub", "amd-systemd-boot", "debian-nvidia-driver")


# Every scenario on lab hosts made by the delegated driver (molecule/resources): create,
# converge, idempotence, testinfra, destroy.
# - intel-grub, amd-systemd-boot: the iommu and vfio roles through playbooks/host_setup.yml,
#   one reboot each.
# - debian-nvidia-driver: the nvidia_driver role through playbooks/nvidia_driver.yml, with
#   Debian's real packages and a module from `gpuprov driver build` (compiled natively here),
#   the pins checked through upgrade and full-upgrade; the role's DKMS compile path with a
#   STAND-IN module compiled on the host; `gpuprov guest inspect` and `guest setup --check`
#   against the converged host (ready; nothing to do).
# Not here: debian-guest-stage, the whole guest stage (driver, fabricmanager, container toolkit
# with Debian's docker and containerd) through playbooks/guest_setup.yml. Alone it takes about
# 35 minutes under emulation; beside these three (suite of 2026-12-07) it had not finished
# installing the driver 20 minutes in, which would take CI past its 90 minutes. It runs by hand
# until the lab makes it cheaper (issue #12): molecule test -s debian-guest-stage.
# All run at once, each on its own lab host in the one lab. A host under emulation keeps about
# one core busy, and most of the driver scenario is dpkg on one core: side by side, the three
# share these machines' two cores, where one after another would leave one idle.
def test_molecule_scenarios(lab_root, tmp_path):
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "GPUPROV_LAB_DIR": str(lab_root),
           "PATH": f"{bin_dir}:{os.environ['PATH']}", "ANSIBLE_FORCE_COLOR": "0"}
    logs = {scenario: tmp_path / f"{scenario}.log" for scenario in SCENARIOS}
    running = {}
    try:
        for scenario, log in logs.items():
            with log.open("w") as out:  # a file, not a pipe: neither run waits on the other
                running[scenario] = subprocess.Popen(
                    [f"{bin_dir}/molecule", "test", "-s", scenario], cwd=ROOT, env=env,
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        # Side by side they took 25.6 min here, the driver's module compiled natively beside
        # them (one after the other: about 29). CI's machines have run up to twice as slow.
        deadline = time.monotonic() + 3600
        for process in running.values():
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        for process in running.values():
            if process.poll() is None:
                process.kill()
    for scenario, process in running.items():
        output = re.sub(r"\x1b\[[0-9;]*m", "", logs[scenario].read_text())  # colour, if any
        assert process.returncode == 0, f"{scenario}:\n{output[-8000:]}"
        # molecule fails the run itself on any changed task in its second converge; this
        # checks that the pass ran at all and came back clean.
        assert re.search(rf"{scenario}\W+idempotence", output), output[-8000:]
        assert re.search(r"ok=\d+\s+changed=0\s+unreachable=0\s+failed=0", output), \
            output[-8000:]
    assert not any((lab_root / "hosts").glob("*")), "a scenario left lab hosts behind"
