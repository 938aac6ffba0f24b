"""Lab hosts booted for real (QEMU, OVMF, Debian's kernel), checked over SSH.

The image is built once into the shared cache (~/.cache/gpuprov) and reused by every test and
every later run; each boot takes about a minute under software emulation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    # Firmware without an IOMMU: the "IOMMU off" starting point on any kernel.
    run_gpuprov("lab", "up", "a", "b", "--iommu", "none")
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
