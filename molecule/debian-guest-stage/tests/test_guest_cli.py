"""testinfra: `gpuprov guest inspect` and `gpuprov guest setup --check` against the host the
guest stage converged, as a user runs them: the real CLI, over SSH, with the roles' own state
scripts, and for --check the real playbooks/guest_setup.yml in check mode, asked for what
converge did (docker and containerd with nvidia as their default, fabricmanager forced, the
STAND-IN repositories and the toolkit's version as --vars).

The host is a lab host; the lab's inventory (GPUPROV_LAB_DIR) reaches it with its pinned host
key. The lab's card is QEMU's 1234:1111, a STAND-IN: the inventory names the card it stands in
for (gpuprov_lab_gpu_stands_in_for, as molecule.yml does)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from gpuprov.lab.hosts import Lab

HOST = "nvguest"
# What converge asked for, as the CLI asks it.
REQUEST = ("--modules", "open", "--runtime", "docker", "--runtime", "containerd",
           "--default-runtime")


@pytest.fixture(scope="module")
def inventory(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inventory")
    (folder / "lab.yml").symlink_to(Lab().inventory_file)
    (folder / "host_vars").mkdir()
    (folder / "host_vars" / f"{HOST}.yml").write_text(
        'gpuprov_lab_gpu_stands_in_for: "10de:2330"\n')
    return folder


@pytest.fixture(scope="module")
def standin_vars(tmp_path_factory):
    """The roles' variables molecule.yml gives the host: the STAND-IN repositories (their keys
    on this machine) and the toolkit's version; `guest setup --vars` takes the same."""
    keys = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "standin-repositories")
    path = tmp_path_factory.mktemp("vars") / "standins.yml"
    path.write_text(yaml.safe_dump({
        "fabricmanager_repository_url": "file:/srv/gpuprov-standins/nvidia-cuda/",
        "fabricmanager_repository_key_file": f"{keys}/nvidia-cuda-key.asc",
        "container_toolkit_repository_url": "file:/srv/gpuprov-standins/nvidia-container-toolkit/",
        "container_toolkit_repository_key_file": f"{keys}/nvidia-container-toolkit-key.asc",
        "container_toolkit_version": "1.17.7",
    }))
    return path


def _gpuprov(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["gpuprov", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "200"})


def test_guest_inspect_finds_the_driver_ready(inventory):
    result = _gpuprov("guest", "inspect", HOST, "-i", str(inventory), *REQUEST, "--json",
                      timeout=300)
    report = json.loads(result.stdout)
    assert (result.returncode, report["status"]) == (0, "ready"), report["missing"]
    assert report["cards"][0]["stand_in"] and report["match"]["branch"] == 535
    assert report["driver"]["module"] == "installed"
    assert report["facts"]["driver_version"].startswith("535.")
    toolkit = report["toolkit"]
    assert toolkit["installed"]["nvidia-container-toolkit"] == "1.17.7-1"
    assert toolkit["wanted"] == ["docker", "containerd"]
    assert toolkit["wired"]["docker"]["default"] == "nvidia"
    assert toolkit["wired"]["containerd"]["default"] == "nvidia"
    assert report["fabricmanager"]["installed"]["nvidia-fabricmanager-535"] == (
        report["facts"]["driver_version"] + "-1")


def test_guest_setup_check_has_nothing_to_do(inventory, standin_vars):
    # The same plan converge made: the archive's pins and the module prebuilt (cached) here,
    # fabricmanager forced as converge forced it.
    result = _gpuprov("guest", "setup", HOST, "-i", str(inventory), *REQUEST, "--prebuilt",
                      "--force-fabricmanager", "--vars", str(standin_vars), "--check", "--json",
                      timeout=1800)
    document = json.loads(result.stdout)
    [outcome] = document["hosts"]
    assert (result.returncode, outcome["outcome"]) == (0, "nothing to do"), (
        outcome, result.stderr[-3000:])
    assert outcome["message"].startswith(f"{HOST} is ready: driver 535.")
