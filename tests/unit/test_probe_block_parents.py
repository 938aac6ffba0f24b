"""probe.sh's block_parents, run by a real sh over a sysfs tree built the way the kernel lays
it out: a partition is a directory inside its disk's, a device-mapper or md device lists what
it sits on under slaves/."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

PROBE = Path(__file__).resolve().parents[2] / "gpuprov/facts/probe.sh"


def _function(sysfs: Path) -> str:
    """block_parents, with dir_name which it resolves links with."""
    text = PROBE.read_text()
    helper = text.index("dir_name() {")
    helper = text[helper:text.index("\n}\n", helper) + 3]
    start = text.index("block_parents() (")
    end = text.index("\n)\n", start) + 3
    return helper + text[start:end].replace("/sys/class/block", str(sysfs / "class/block"))


def _disk(sysfs: Path, name: str, *partitions: str) -> None:
    disk = sysfs / "devices/pci0000:00/0000:00:1f.2/ata1/block" / name
    disk.mkdir(parents=True)
    (sysfs / "class/block" / name).symlink_to(disk)
    for part in partitions:
        (disk / part).mkdir()
        (disk / part / "partition").write_text("1\n")
        (sysfs / "class/block" / part).symlink_to(disk / part)


def _virtual(sysfs: Path, name: str, *below: str) -> None:
    device = sysfs / "devices/virtual/block" / name
    (device / "slaves").mkdir(parents=True)
    (sysfs / "class/block" / name).symlink_to(device)
    for slave in below:
        (device / "slaves" / slave).symlink_to((sysfs / "class/block" / slave).resolve())


@pytest.fixture
def sysfs(tmp_path) -> Path:
    (tmp_path / "class/block").mkdir(parents=True)
    _disk(tmp_path, "sda", "sda1", "sda2", "sda3")
    _disk(tmp_path, "sdb", "sdb1")
    _virtual(tmp_path, "dm-0", "sda3")  # Proxmox VE's default: LVM on the third partition
    _virtual(tmp_path, "md0", "sda2", "sdb1")  # a mirror over two disks
    _virtual(tmp_path, "dm-1", "md0")  # LVM on the mirror
    return tmp_path


@pytest.mark.parametrize(("device", "disks"), [
    ("sda1", ["sda"]), ("sda", ["sda"]), ("dm-0", ["sda"]), ("md0", ["sda", "sdb"]),
    ("dm-1", ["sda", "sdb"]), ("nvme0n1", []),
])
def test_each_disk_once(sysfs, device, disks):
    out = subprocess.run(["sh", "-c", f"{_function(sysfs)}\nblock_parents {device}"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == disks
