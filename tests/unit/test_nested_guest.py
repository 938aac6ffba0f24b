"""The nested guest's pure parts: the newc writer, its initramfs, /init on a fake sysfs, and the
console parser (tests/e2e/nested_guest.py)."""

from __future__ import annotations

import gzip
import stat
import subprocess

import pytest

from tests.e2e import nested_guest as ng


def read_newc(archive: bytes) -> list[dict]:
    """An independent newc reader: every member up to the trailer, with its fields."""
    members, offset = [], 0
    while True:
        header = archive[offset:offset + 110]
        assert header[:6] == b"070701", (offset, header[:6])
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, _, _, rmajor, rminor, namesize, check = fields
        name_end = offset + 110 + namesize
        assert archive[name_end - 1] == 0, "name is NUL-terminated"
        name = archive[offset + 110:name_end - 1].decode()
        data_start = name_end + (-name_end % 4)
        assert archive[name_end:data_start] == b"\0" * (data_start - name_end), "name padding"
        data = archive[data_start:data_start + size]
        offset = data_start + size + (-(data_start + size) % 4)
        if name == "TRAILER!!!":
            assert offset == len(archive), "nothing after the trailer"
            return members
        members.append({"name": name, "ino": ino, "mode": mode, "uid": uid, "gid": gid,
                        "nlink": nlink, "mtime": mtime, "data": data,
                        "rdev": (rmajor, rminor), "check": check})


def test_newc_round_trip_with_odd_sizes():
    entries = [ng.dir_entry("bin"), ng.file_entry("bin/a", b"x"),
               ng.file_entry("bin/bb", b"12345", 0o644), ng.file_entry("empty", b""),
               ng.symlink_entry("bin/sh", "busybox"),
               ng.device_entry("dev/console", 5, 1)]
    archive = ng.newc(entries)
    assert len(archive) % 4 == 0
    members = read_newc(archive)
    assert [m["name"] for m in members] == ["bin", "bin/a", "bin/bb", "empty", "bin/sh",
                                            "dev/console"]
    by_name = {m["name"]: m for m in members}
    assert stat.S_ISDIR(by_name["bin"]["mode"]) and by_name["bin"]["nlink"] == 2
    assert by_name["bin/a"]["data"] == b"x" and by_name["bin/a"]["mode"] == 0o100755
    assert by_name["bin/bb"]["data"] == b"12345" and by_name["bin/bb"]["mode"] == 0o100644
    assert by_name["empty"]["data"] == b""
    assert stat.S_ISLNK(by_name["bin/sh"]["mode"]) and by_name["bin/sh"]["data"] == b"busybox"
    assert stat.S_ISCHR(by_name["dev/console"]["mode"])
    assert by_name["dev/console"]["rdev"] == (5, 1)
    assert {(m["uid"], m["gid"], m["mtime"], m["check"]) for m in members} == {(0, 0, 0, 0)}
    assert len({m["ino"] for m in members}) == len(members), "distinct inodes"


def test_initramfs_is_gzip_newc_with_busybox_applets_and_init_and_reproducible():
    image = ng.initramfs(b"\x7fELF fake busybox")
    assert image == ng.initramfs(b"\x7fELF fake busybox")
    members = {m["name"]: m for m in read_newc(gzip.decompress(image))}
    assert members["bin/busybox"]["data"] == b"\x7fELF fake busybox"
    assert members["bin/busybox"]["mode"] & 0o111
    for applet in ng.APPLETS:
        assert members[f"bin/{applet}"]["data"] == b"busybox"
    assert members["init"]["data"].startswith(b"#!/bin/sh\n")
    assert members["init"]["mode"] == 0o100755
    assert members["dev/console"]["rdev"] == (5, 1)
    assert {"proc", "sys", "dev"} <= set(members)


def test_cpio_lists_the_archive(tmp_path):
    """GNU cpio (installed by scripts/setup.sh) reads what our writer wrote."""
    listing = subprocess.run(["cpio", "-t"], input=gzip.decompress(ng.initramfs(b"bb")),
                             capture_output=True, check=True).stdout.decode().split()
    assert {"init", "bin/busybox", "bin/sh", "dev/console"} <= set(listing)


def _fake_pci(root, address, vendor, device, klass):
    d = root / "sys/bus/pci/devices" / address
    d.mkdir(parents=True)
    for name, value in (("vendor", vendor), ("device", device), ("class", klass)):
        (d / name).write_text(value + "\n")


@pytest.mark.parametrize("active, copies_on_serial", [("ttyS0", 0), ("tty0", 1)])
def test_init_reports_every_device_once_per_tty_then_powers_off(tmp_path, active,
                                                                copies_on_serial):
    _fake_pci(tmp_path, "0000:00:00.0", "0x8086", "0x29c0", "0x060000")
    _fake_pci(tmp_path, "0000:01:00.0", "0x1234", "0x1111", "0x030000")
    _fake_pci(tmp_path, "0000:01:00.1", "0x8086", "0x293e", "0x040300")
    (tmp_path / "sys/class/tty/console").mkdir(parents=True)
    (tmp_path / "sys/class/tty/console/active").write_text(active + "\n")
    (tmp_path / "console").touch()
    (tmp_path / "ttyS0").touch()
    # The real /init, pointed at the fake tree; mount and poweroff stubbed as shell functions
    # (functions win over PATH), so nothing here needs root.
    script = (ng.INIT.replace("/sys/", f"{tmp_path}/sys/")
              .replace("/dev/console", f"{tmp_path}/console")
              .replace("/dev/ttyS0", f"{tmp_path}/ttyS0"))
    script = script.replace("export PATH=/bin\n", "mount() { :; }\n"
                            "poweroff() { echo POWEROFF \"$@\"; exit 0; }\n", 1)
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "POWEROFF -f\n"
    expected = ["GPUPROV-PCI 0000:00:00.0 8086:29c0 class=060000",
                "GPUPROV-PCI 0000:01:00.0 1234:1111 class=030000",
                "GPUPROV-PCI 0000:01:00.1 8086:293e class=040300", ng.DONE]
    assert (tmp_path / "console").read_text().splitlines() == expected
    assert (tmp_path / "ttyS0").read_text().splitlines() == expected * copies_on_serial
    console = (tmp_path / "console").read_text()
    assert ng.parse_console(console)[1:] == [("0000:01:00.0", "1234:1111", "030000"),
                                             ("0000:01:00.1", "8086:293e", "040300")]
    assert ng.finished(console)


SERIAL_LOG = (
    "\x1b[2J\x1b[01;01HBdsDxe: loading Boot0001 \"UEFI Misc Device\"\r\n"
    "EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path\r\n"
    "[    1.234567] Run /init as init process\r\n"
    "GPUPROV-PCI 0000:00:00.0 8086:29c0 class=060000\r\n"
    "GPUPROV-PCI 0000:01:00.0 1234:1111 class=030000\r\n"
    "[    2.000000] random: crng init done\r\n"
    "GPUPROV-PCI 0000:01:00.1 8086:293e class=040300\r\n"
    "GPUPROV-PCI 0000:01:00.1 8086:293e class=040300\r\n"
    "GPUPROV-DONE\r\n"
    "[    2.5] reboot: Power down\r\n"
)


def test_parse_console_reads_the_lines_in_order_each_once():
    assert ng.parse_console(SERIAL_LOG) == [
        ("0000:00:00.0", "8086:29c0", "060000"),
        ("0000:01:00.0", "1234:1111", "030000"),
        ("0000:01:00.1", "8086:293e", "040300"),
    ]
    assert ng.finished(SERIAL_LOG)


def test_parse_console_finds_a_line_after_a_kernel_message_on_the_same_line():
    text = "[    3.1] pci 0000:01:00.0: BAR 0GPUPROV-PCI 0000:01:00.0 1234:1111 class=030000\n"
    assert ng.parse_console(text) == [("0000:01:00.0", "1234:1111", "030000")]


@pytest.mark.parametrize("text", [
    "", "GPUPROV-PCI 0000:01:00.0 1234:111 class=030000",  # truncated id
    "GPUPROV-PCI 01:00.0 1234:1111 class=030000",          # no domain
    "GPUPROV-PCI 0000:01:00.0 0x1234:0x1111 class=0x030000",
])
def test_parse_console_ignores_what_is_not_a_report_line(text):
    assert ng.parse_console(text) == []


def test_finished_wants_the_done_line_itself():
    assert not ng.finished("GPUPROV-PCI 0000:01:00.0 1234:1111 class=030000\n")
    assert not ng.finished("echo GPUPROV-DONE-ish\n")
    assert ng.finished("GPUPROV-DONE")
    assert ng.finished("x\r\nGPUPROV-DONE\r\n[ 9.1] reboot: Power down\r\n")


def test_newest_kernel_compares_versions_not_strings():
    names = ["config-6.1.0-9-amd64", "vmlinuz-6.1.0-9-amd64", "vmlinuz-6.1.0-10-amd64",
             "initrd.img-6.1.0-10-amd64", "grub"]
    assert ng.newest_kernel(names) == "vmlinuz-6.1.0-10-amd64"
    assert ng.newest_kernel(["vmlinuz-6.1.0-50-amd64"]) == "vmlinuz-6.1.0-50-amd64"
    assert ng.newest_kernel(["grub", "efi"]) is None


def test_build_downloads_once_per_recipe_into_the_cache(tmp_path, monkeypatch):
    downloads = []

    def fake_download(work):
        downloads.append(work)
        return b"busybox"

    monkeypatch.setattr(ng, "_download_busybox", fake_download)
    built = ng.build(tmp_path)
    assert built.parent == tmp_path
    assert built.name == f"nested-guest-{ng.recipe_hash(ng.recipe())}.cpio.gz"
    assert ng.build(tmp_path) == built and len(downloads) == 1
    assert built.read_bytes() == ng.initramfs(b"busybox")
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [built.name]
    monkeypatch.setattr(ng, "INIT", ng.INIT + "# changed\n")
    assert ng.build(tmp_path) != built and len(downloads) == 2
