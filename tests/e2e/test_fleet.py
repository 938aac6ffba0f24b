"""One stage over a group of real lab hosts: one table, batches, a refused host, --max-fail,
and the per-host lock against a second run (issue #13's fleet and lock acceptance).

Every `host` command here is gpuprov as users install it: a wheel in a fresh virtualenv, run
from a directory outside the checkout, so its playbooks and roles come from the package."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from gpuprov.lab.hosts import Lab
from gpuprov.lab.supervisor import LOG_FILE
from tests.e2e.test_host_setup import _boot_id, _drivers, _ssh, _untouched, _up_together

pytestmark = pytest.mark.vm

# In inventory order: the refused host sits between two that can be set up.
FLEET = {"fl-a": [], "fl-disk": ["--group-mate", "disk"], "fl-c": []}


def _group_inventory(lab_root, tmp_path) -> str:
    """The lab's own inventory plus a file of ours that puts the hosts in one group."""
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "lab.yml").symlink_to(lab_root / "inventory.yml")
    (inventory / "groups.yml").write_text(
        "gpu_hosts:\n  hosts:\n" + "".join(f"    {name}:\n" for name in FLEET))
    return str(inventory)


def _installed(installed_gpuprov, run_gpuprov, elsewhere):
    """Run the installed gpuprov in ``elsewhere``, against the test's lab."""

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([str(installed_gpuprov), *args], cwd=elsewhere,
                                env=run_gpuprov.env, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=1800, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"gpuprov {' '.join(args)} exited {result.returncode}\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    return run


def test_a_group_set_up_in_batches_around_a_refused_host_and_the_lock(
        run_gpuprov, installed_gpuprov, lab_root, tmp_path):
    _up_together(run_gpuprov, FLEET)
    inventory = _group_inventory(lab_root, tmp_path)
    gpuprov = _installed(installed_gpuprov, run_gpuprov, tmp_path)
    assert str(installed_gpuprov.parent.parent) in gpuprov("playbooks").stdout
    try:
        booted = {name: _boot_id(run_gpuprov, name) for name in FLEET}

        table = gpuprov("host", "inspect", "gpu_hosts", "-i", inventory, check=False)
        assert table.returncode == 20, table.stdout + table.stderr  # the worst: fl-disk unsafe
        assert "3 hosts" in table.stdout
        assert table.stdout.count("needs setup") == 2 and "unsafe" in table.stdout
        document = json.loads(gpuprov("host", "inspect", "gpu_hosts", "-i", inventory,
                                      "--json", check=False).stdout)
        assert [h["exit_code"] for h in document["hosts"]] == [10, 20, 10]

        # One at a time, stopping at the first refusal: fl-a is set up, fl-c never started.
        stopped = gpuprov("host", "setup", "gpu_hosts", "-i", inventory, "--yes",
                          "--serial", "1", "--max-fail", "0", "--json", check=False)
        outcomes = {h["host"]: h for h in json.loads(stopped.stdout)["hosts"]}
        assert {h: o["outcome"] for h, o in outcomes.items()} == {
            "fl-a": "done", "fl-disk": "refused", "fl-c": "not run"}, stopped.stderr
        assert stopped.returncode == 1
        assert "holds the root disk's controller" in outcomes["fl-disk"]["message"]
        assert outcomes["fl-a"]["rebooted"]
        assert _boot_id(run_gpuprov, "fl-c") == booted["fl-c"] and _untouched(run_gpuprov, "fl-c")

        # Again, without --max-fail: the refused host does not stop the others; fl-a has
        # nothing to do. While fl-c is being changed, a second run on it is refused.
        first = subprocess.Popen(
            [str(installed_gpuprov), "host", "setup", "gpu_hosts", "-i", inventory, "--yes",
             "--serial", "1"], cwd=tmp_path, env=run_gpuprov.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for_lock(run_gpuprov, "fl-c", first)
        second = run_gpuprov("host", "setup", "fl-c", "--yes", check=False)
        out, err = first.communicate(timeout=1800)
        assert second.returncode == 20, second.stdout + second.stderr
        assert "fl-c is being changed by another gpuprov run" in " ".join(second.stderr.split())
        assert "changed:" not in second.stdout

        assert first.returncode == 20, out + err  # the worst: fl-disk refused
        assert "nothing to do: fl-a: fl-a is ready" in out
        assert "ready: fl-c: every function on vfio-pci" in out and "one reboot" in out
        assert "outcome per host" in out

        # Each host set up rebooted exactly once in all of this; the refused one never.
        after_a, after_c = _boot_id(run_gpuprov, "fl-a"), _boot_id(run_gpuprov, "fl-c")
        assert after_a != booted["fl-a"] and after_c != booted["fl-c"]
        assert _reboots(lab_root, "fl-a") == _reboots(lab_root, "fl-c") == 1
        assert _reboots(lab_root, "fl-disk") == 0
        assert _drivers(run_gpuprov, "fl-c") == ["vfio-pci", "vfio-pci"]
        assert _boot_id(run_gpuprov, "fl-disk") == booted["fl-disk"]
        assert _untouched(run_gpuprov, "fl-disk")
        # The lock is released at the end.
        assert _ssh(run_gpuprov, "fl-c", "ls /run/gpuprov 2>/dev/null | wc -l") == "0"
    finally:
        run_gpuprov("lab", "destroy", *FLEET)


def _reboots(lab_root, name: str) -> int:
    """How often the guest rebooted: each reboot is a power cycle its supervisor logs."""
    log = Lab(lab_root).files(name).dir / LOG_FILE
    return log.read_text().count("guest reset: power-cycling") if log.exists() else 0


def _wait_for_lock(run_gpuprov, name: str, process: subprocess.Popen) -> None:
    """Until ``name``'s lock is held (the first run is changing it)."""
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline and process.poll() is None:
        if _ssh(run_gpuprov, name, "test -d /run/gpuprov/lock && echo held || true") == "held":
            return
        time.sleep(2)
    raise AssertionError(f"{name}'s lock was never taken; the first run exited "
                         f"{process.poll()}")
