"""testinfra: after converge, fabricmanager (from the STAND-IN of NVIDIA's repository,
tests/standins) is installed at exactly the driver's version although a newer one is offered,
pinned and held, its service enabled and skipped for want of NVSwitch devices; a newer one put
in by hand is named by the role's verify as a cause of Error 802, and the role moves it back.
Read from the host itself (dpkg, apt, systemd, modinfo), not from the role's own report."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from gpuprov.transport.ansible import playbook_environment

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("nvidia-fabricmanager-535", "libnvidia-nscq-535")


@pytest.fixture(scope="module")
def driver(host) -> str:
    """The version of the nvidia module the running kernel loads: what fabricmanager matches."""
    # Debian renames the module: nvidia-current-open.ko for the open flavour.
    version = host.run("modinfo -F version nvidia-current-open")
    assert re.fullmatch(r"535\.\d+\.\d+", version.stdout.strip()), version.stdout + version.stderr
    return version.stdout.strip()


def _installed(host) -> dict[str, str]:
    out = host.run("dpkg-query --show --showformat='${Package} ${Version} ${db:Status-Abbrev}\\n' "
                   + " ".join(PACKAGES)).stdout
    return {name: version for name, version, state in
            (line.split() for line in out.splitlines() if len(line.split()) == 3)
            if state in ("ii", "hi")}


def _playbook(playbook: Path, *extra: str) -> subprocess.CompletedProcess:
    """A playbook against this scenario's host, as gpuprov runs them (its ansible.cfg, and
    mitogen's strategy)."""
    env = {**os.environ, **playbook_environment(),
           "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_FORCE_COLOR": "0"}
    return subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(playbook), *extra],
        env=env, capture_output=True, text=True, timeout=1200, check=False)


def test_fabricmanager_is_the_drivers_version_though_a_newer_one_is_offered(host, driver):
    offered = host.run("apt-cache madison nvidia-fabricmanager-535").stdout
    versions = re.findall(r"\|\s*(\S+)\s*\|", offered)
    assert f"{driver}-1" in versions and len(versions) == 2, offered
    assert _installed(host) == {package: f"{driver}-1" for package in PACKAGES}
    held = set(host.run("apt-mark showhold").stdout.split())
    assert set(PACKAGES) <= held
    pins = host.file("/etc/apt/preferences.d/gpuprov-fabricmanager.pref").content_string
    for package in PACKAGES:
        assert f"Package: {package}\nPin: version {driver}-1\nPin-Priority: 1001" in pins
    # What an administrator's upgrade would do: nothing to fabricmanager.
    simulated = host.run("apt-get --simulate upgrade")
    assert simulated.rc == 0 and "Inst nvidia-fabricmanager" not in simulated.stdout, \
        simulated.stdout


def test_the_service_is_enabled_and_waits_for_nvswitch_devices(host):
    assert host.run("systemctl is-enabled nvidia-fabricmanager").stdout.strip() == "enabled"
    assert host.file("/usr/share/nvidia/nvswitch/fabricmanager.cfg").contains("^FABRIC_MODE=0$")
    # Started without NVSwitch devices, the unit is skipped by its condition, not failed.
    started = host.run("systemctl start nvidia-fabricmanager")
    assert started.rc == 0, started.stderr
    shown = host.run("systemctl show nvidia-fabricmanager "
                     "--property=ConditionResult,ActiveState,Result").stdout
    assert "ConditionResult=no" in shown and "ActiveState=inactive" in shown \
        and "Result=success" in shown, shown


def test_a_newer_fabricmanager_is_named_as_error_802_and_moved_back(host, driver):
    newer = re.findall(r"\|\s*(\S+)\s*\|",
                       host.run("apt-cache madison nvidia-fabricmanager-535").stdout)
    newer = next(version for version in newer if version != f"{driver}-1")
    # An administrator upgrades fabricmanager by hand, past the pin and the hold.
    upgraded = host.run("DEBIAN_FRONTEND=noninteractive apt-get install --yes "
                        f"--allow-change-held-packages nvidia-fabricmanager-535={newer}")
    assert upgraded.rc == 0, upgraded.stdout + upgraded.stderr
    try:
        verify = _playbook(Path(__file__).parent / "verify_fabricmanager.yml")
        output = verify.stdout + verify.stderr
        assert verify.returncode != 0, output[-4000:]
        assert (f"Error 802 cause: versions differ: nvidia-fabricmanager-535 is "
                f"{newer.rsplit('-', 1)[0]} but the driver is {driver}") in output, output[-4000:]
    finally:
        # The role puts it back at the driver's version, and holds it again.
        repaired = _playbook(ROOT / "playbooks/fabricmanager.yml", "-e", "fabricmanager_force=true")
    assert repaired.returncode == 0, (repaired.stdout + repaired.stderr)[-4000:]
    assert _installed(host) == {package: f"{driver}-1" for package in PACKAGES}
    assert set(PACKAGES) <= set(host.run("apt-mark showhold").stdout.split())
