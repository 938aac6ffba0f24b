"""Lab hosts booted for real (QEMU, OVMF, Debian's kernel), checked over SSH.

The image is built once into the shared cache (~/.cache/gpuprov) and reused by every test and
every later run; each boot takes about a minute under software emulation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import qemu_pids_under

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.vm


def _ssh(run_gpuprov, name: str, command: str) -> str:
    return run_gpuprov("lab", "ssh", name, "--", command).stdout


def _driver(run_gpuprov, name: str, address: str) -> str:
    return _ssh(run_gpuprov, name,
                f"basename $(readlink /sys/bus/pci/devices/{address}/driver)").strip()


def _assert_stock_gpu(run_gpuprov, name: str) -> None:
    lspci = _ssh(run_gpuprov, name, "lspci -nn -s 01:00")
    assert "01:00.0 VGA compatible controller [0300]" in lspci and "[1234:1111]" in lspci
    assert "01:00.1 Audio device [0403]" in lspci and "[8086:293e]" in lspci
    assert _driver(run_gpuprov, name, "0000:01:00.0") == "bochs-drm"
    assert _driver(run_gpuprov, name, "0000:01:00.1") == "snd_hda_intel"
    cmdline = _ssh(run_gpuprov, name, "cat /proc/cmdline")
    assert "iommu" not in cmdline, cmdline


def test_two_hosts_boot_concurrently_and_are_destroyed_without_a_trace(run_gpuprov, lab_root):
    # Firmware without an IOMMU: the "IOMMU off" starting point on any kernel. --cold: a
    # real boot from the firmware on, whatever the checkpoint cache holds.
    booted = run_gpuprov("lab", "up", "a", "b", "--iommu", "none", "--cold")
    assert booted.stderr.count("booting (SSH on") == 2, booted.stderr
    assert "resumed" not in booted.stderr and "checkpointed" not in booted.stderr
    try:
        listed = {h["name"]: h for h in json.loads(run_gpuprov("lab", "list", "--json").stdout)}
        assert {n: h["state"] for n, h in listed.items()} == {"a": "running", "b": "running"}
        assert listed["a"]["ssh_port"] != listed["b"]["ssh_port"]
        assert len(qemu_pids_under(lab_root)) == 2

        for name in ("a", "b"):
            _assert_stock_gpu(run_gpuprov, name)
            assert _ssh(run_gpuprov, name, "hostname").strip() == name
            assert _ssh(run_gpuprov, name, "ls /sys/kernel/iommu_groups | wc -l").strip() == "0"
            assert "DMAR" not in _ssh(run_gpuprov, name, "ls /sys/firmware/acpi/tables")

        status = run_gpuprov("lab", "ssh", "a", "--", "exit 7", check=False)
        assert status.returncode == 7

        inventory = run_gpuprov("lab", "inventory").stdout.strip()
        assert inventory == str(lab_root / "inventory.yml")
        # Plain ansible-playbook reaches the hosts by name through the lab's inventory,
        # with their host keys pinned.
        played = subprocess.run(
            [str(Path(sys.executable).with_name("ansible-playbook")), "-i", inventory,
             "playbooks/ping.yml"], cwd=ROOT, capture_output=True, text=True, check=False,
            env={**os.environ, "ANSIBLE_FORCE_COLOR": "0"}, stdin=subprocess.DEVNULL)
        assert played.returncode == 0, played.stdout + played.stderr
        assert "a runs Linux 6." in played.stdout and "b runs Linux 6." in played.stdout
        assert (lab_root / "hosts/a/console.log").stat().st_size > 0
    finally:
        run_gpuprov("lab", "destroy", "a", "b")
    assert qemu_pids_under(lab_root) == []
    assert not (lab_root / "hosts/a").exists() and not (lab_root / "hosts/b").exists()
    assert "a:" not in (lab_root / "inventory.yml").read_text()


def test_amd_systemd_boot_host(run_gpuprov, lab_root):
    run_gpuprov("lab", "up", "amd1", "--iommu", "amd", "--boot", "systemd-boot")
    try:
        _assert_stock_gpu(run_gpuprov, "amd1")
        assert "AuthenticAMD" in _ssh(run_gpuprov, "amd1", "grep -m1 vendor_id /proc/cpuinfo")
        bootctl = _ssh(run_gpuprov, "amd1", "bootctl status")
        assert "Product: systemd-boot" in bootctl
        # Linux turns the AMD IOMMU on whenever the firmware describes one (IVRS): groups
        # exist although nothing asked for it on the command line.
        assert "IVRS" in _ssh(run_gpuprov, "amd1", "ls /sys/firmware/acpi/tables")
        group = _ssh(run_gpuprov, "amd1",
                     "basename $(readlink /sys/bus/pci/devices/0000:01:00.0/iommu_group)")
        assert group.strip().isdigit()

        run_gpuprov("lab", "down", "amd1")
        listed = json.loads(run_gpuprov("lab", "list", "--json").stdout)
        assert [h["state"] for h in listed if h["name"] == "amd1"] == ["stopped"]
        assert qemu_pids_under(lab_root) == []
    finally:
        run_gpuprov("lab", "destroy", "amd1")


def _reboot(run_gpuprov, name: str, timeout: float = 900) -> str:
    """Reboot ``name`` from inside; its new boot id once SSH answers again."""
    before = _ssh(run_gpuprov, name, "cat /proc/sys/kernel/random/boot_id").strip()
    run_gpuprov("lab", "ssh", name, "--", "systemctl reboot", check=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(3)
        now = run_gpuprov("lab", "ssh", name, "--", "cat /proc/sys/kernel/random/boot_id",
                          check=False).stdout.strip()
        if now and now != before:
            return now
    raise AssertionError(f"{name} did not come back from its reboot in {timeout:.0f} s")


def _host_keys(lab_root: Path, name: str) -> set[str]:
    return {line.split()[2] for line in (lab_root / f"hosts/{name}/known_hosts").read_text()
            .splitlines() if line.strip()}


@pytest.mark.skipif(os.environ.get("GPUPROV_LAB_COLD", "") not in ("", "0"),
                    reason="GPUPROV_LAB_COLD=1: no host is resumed, so there is nothing to test")
def test_hosts_resumed_from_one_checkpoint_are_each_their_own_host(run_gpuprov, lab_root):
    # The first host of this shape boots and is checkpointed, unless an earlier run did that.
    first = run_gpuprov("lab", "up", "r0")
    try:
        assert "checkpointed as" in first.stderr or "resumed the boot checkpoint" in first.stderr
        together = run_gpuprov("lab", "up", "r1", "r2")
        assert together.stderr.count("resumed the boot checkpoint") == 2, together.stderr
        assert "booting" not in together.stderr

        seen = {}
        for name in ("r0", "r1", "r2"):
            hostname, machine_id, clock = _ssh(
                run_gpuprov, name, "hostname; cat /etc/machine-id; date +%s").split()
            assert hostname == name
            assert abs(int(clock) - time.time()) < 60, "the clock was not set after resuming"
            seen[name] = (machine_id, _host_keys(lab_root, name))
        assert len({machine_id for machine_id, _ in seen.values()}) == 3
        assert not seen["r1"][1] & seen["r2"][1] and not seen["r0"][1] & seen["r1"][1]
        # Only this lab's key logs in, not the checkpoint cache's.
        assert _ssh(run_gpuprov, "r1", "grep -c . /root/.ssh/authorized_keys").strip() == "1"
        # A resumed host is a real kernel on real (emulated) devices.
        _assert_stock_gpu(run_gpuprov, "r1")

        # It reboots for real (QEMU power-cycles it) and keeps its own identity.
        boot_id = _reboot(run_gpuprov, "r1")
        assert _ssh(run_gpuprov, "r1", "hostname").strip() == "r1"
        assert _ssh(run_gpuprov, "r1", "cat /proc/sys/kernel/random/boot_id").strip() == boot_id
        supervisor_log = (lab_root / "hosts/r1/supervisor.log").read_text()
        assert "guest reset: power-cycling" in supervisor_log

        listed = json.loads(run_gpuprov("lab", "cache", "--json").stdout)
        shapes = [e["spec"] for e in listed if e["kind"] == "boot"]
        assert any(s["iommu"] == "intel" and s["boot"] == "grub" and s["memory_mib"] == 1024
                   for s in shapes), listed
    finally:
        run_gpuprov("lab", "destroy", "r0", "r1", "r2")
