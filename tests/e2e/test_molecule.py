"""molecule's delegated driver on lab hosts: create, converge, idempotence, verify, destroy."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.e2e.molecule_runs import ROOT

pytestmark = pytest.mark.vm

SCENARIOS = ("intel-grub", "amd-systemd-boot", "debian-guest-stage")


# Every scenario on lab hosts made by the delegated driver (molecule/resources): create,
# converge, idempotence, testinfra, destroy.
# - intel-grub, amd-systemd-boot: the iommu and vfio roles through playbooks/host_setup.yml,
#   one reboot each.
# - debian-guest-stage: the whole guest stage through playbooks/guest_setup.yml: Debian's real
#   NVIDIA packages with a module from `gpuprov driver build` (compiled natively here), the pins
#   checked through upgrade and full-upgrade; fabricmanager skipped, then forced in lockstep;
#   the container toolkit wired to Debian's real docker and containerd; the role's DKMS compile
#   path with a STAND-IN module; `gpuprov guest inspect` and `guest setup --check` on the
#   result (ready; nothing to do). It started with the suite (tests/e2e/molecule_runs.py).
# Each scenario has its own lab host in the one molecule lab. A host under emulation keeps
# about one core busy: the first of these tests starts the two host-setup scenarios side by
# side, on the cores the other lab-host tests have left.
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(molecule_runs, scenario):
    molecule_runs.start(SCENARIOS)  # those collected and not started yet
    run = molecule_runs[scenario]
    code = run.wait()
    output = run.output()
    assert code is not None, f"{scenario} ran out of time:\n{output[-8000:]}"
    assert code == 0, f"{scenario}:\n{output[-8000:]}"
    # molecule fails the run itself on any changed task in its second converge; this checks
    # that the pass ran at all and came back clean.
    assert re.search(rf"{scenario}\W+idempotence", output), output[-8000:]
    assert re.search(r"ok=\d+\s+changed=0\s+unreachable=0\s+failed=0", output), output[-8000:]
    # Every host in the lab is gone but those of scenarios still running: the last test to
    # finish sees the lab empty.
    still_running = {platform for other in molecule_runs.scenarios
                     if molecule_runs[other].process.poll() is None
                     for platform in _platform_names(other)}
    left = sorted(host.name for host in (molecule_runs.lab / "hosts").glob("*")
                  if host.name not in still_running)
    assert not left, f"lab hosts left behind: {left}"


def _platform_names(scenario: str) -> list[str]:
    config = yaml.safe_load((ROOT / "molecule" / scenario / "molecule.yml").read_text())
    return [platform["name"] for platform in config["platforms"]]
