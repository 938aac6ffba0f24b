"""testinfra: `gpuprov guest inspect` and `gpuprov guest setup --check` against the host the
driver scenario converged, as a user runs them: the real CLI, over SSH, with the roles' own state
scripts, and for --check the real playbooks/guest_setup.yml in check mode.

The host is a lab host; the lab's inventory (GPUPROV_LAB_DIR) reaches it with its pinned host
key. The lab's card is QEMU's 1234:1111, a STAND-IN: the inventory names the card it stands in
for (gpuprov_lab_gpu_stands_in_for, as molecule.yml does)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from gpuprov.lab.hosts import Lab

HOST = "nvdriver"


@pytest.fixture(scope="module")
def inventory(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inventory")
    (folder / "lab.yml").symlink_to(Lab().inventory_file)
    (folder / "host_vars").mkdir()
    (folder / "host_vars" / f"{HOST}.yml").write_text(
        'gpuprov_lab_gpu_stands_in_for: "10de:2330"\n')
    return folder


def _gpuprov(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["gpuprov", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "200"})


def test_guest_inspect_finds_the_driver_ready(inventory):
    result = _gpuprov("guest", "inspect", HOST, "-i", str(inventory), "--modules", "open",
                      "--json", timeout=300)
    report = json.loads(result.stdout)
    assert (result.returncode, report["status"]) == (0, "ready"), report["missing"]
    assert report["cards"][0]["stand_in"] and report["match"]["branch"] == 535
    assert report["driver"]["module"] == "installed"
    assert report["facts"]["driver_version"].startswith("535.")
    assert report["toolkit"] is None  # no container runtime here: the toolkit is left out
    assert "no NVSwitch: fabricmanager is not needed" in report["notes"]


def test_guest_setup_check_has_nothing_to_do(inventory):
    # The same plan converge made: the archive's pins and the module prebuilt (cached) here.
    result = _gpuprov("guest", "setup", HOST, "-i", str(inventory), "--modules", "open",
                      "--prebuilt", "--check", "--json", timeout=1800)
    document = json.loads(result.stdout)
    [outcome] = document["hosts"]
    assert (result.returncode, outcome["outcome"]) == (0, "nothing to do"), (
        outcome, result.stderr[-3000:])
    assert outcome["message"].startswith(f"{HOST} is ready: driver 535.")
