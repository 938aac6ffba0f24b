"""Bad input to `gpuprov lab`: each refused with a clear error, and nothing created.

These run the installed CLI for real; none of them gets as far as booting a VM.
"""

from __future__ import annotations

import socket
import subprocess

import pytest


def _assert_refused(result, code: int, *phrases: str) -> None:
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    for phrase in phrases:
        assert phrase in " ".join(result.stderr.split()), result.stderr


def _no_hosts(lab_root) -> bool:
    return not any((lab_root / "hosts").glob("*"))


def test_invalid_host_name(run_gpuprov, lab_root):
    result = run_gpuprov("lab", "up", "Bad_Name", check=False)
    _assert_refused(result, 2, "'Bad_Name' is not a valid lab host name", "hint: use 1-32")
    assert _no_hosts(lab_root)


@pytest.mark.parametrize("verb", ["ssh", "down", "destroy"])
def test_unknown_host_name(run_gpuprov, verb):
    result = run_gpuprov("lab", verb, "nosuchhost", check=False)
    _assert_refused(result, 3, "no lab host named 'nosuchhost'", "gpuprov lab up nosuchhost")


def test_port_already_taken(run_gpuprov, lab_root):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_gpuprov("lab", "up", "p1", "--ssh-port", str(port), check=False)
    _assert_refused(result, 1, f"port {port} on 127.0.0.1 is already in use")
    assert _no_hosts(lab_root)


def test_missing_qemu(run_gpuprov, lab_root):
    result = run_gpuprov("lab", "up", "q1", env={"GPUPROV_QEMU": "/nonexistent/qemu"},
                         check=False)
    _assert_refused(result, 1, "/nonexistent/qemu not found", "apt-get install qemu-system-x86")
    assert _no_hosts(lab_root)


@pytest.mark.parametrize("variable", ["GPUPROV_OVMF_CODE", "GPUPROV_OVMF_VARS"])
def test_missing_ovmf(run_gpuprov, lab_root, variable):
    result = run_gpuprov("lab", "up", "o1", env={variable: "/nonexistent/OVMF.fd"}, check=False)
    _assert_refused(result, 1, "OVMF firmware not found: /nonexistent/OVMF.fd",
                    "apt-get install ovmf")
    assert _no_hosts(lab_root)


@pytest.fixture
def tiny_filesystem(tmp_path):
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tiny", str(mount_point)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_no_disk_space_for_the_lab(run_gpuprov, tiny_filesystem):
    result = run_gpuprov("lab", "up", "d1", env={"GPUPROV_LAB_DIR": str(tiny_filesystem / "lab")},
                         check=False)
    _assert_refused(result, 1, f"not enough disk space in {tiny_filesystem / 'lab'}",
                    "GiB needed")
    assert not (tiny_filesystem / "lab" / "hosts").exists()


def test_no_disk_space_to_build_the_image(run_gpuprov, tiny_filesystem):
    result = run_gpuprov("lab", "up", "d2", env={"GPUPROV_CACHE_DIR": str(tiny_filesystem)},
                         check=False)
    _assert_refused(result, 1, f"not enough disk space in {tiny_filesystem}",
                    "building the lab image")


def test_pending_stage_says_not_yet_available(run_gpuprov):
    result = run_gpuprov("deploy", "install", check=False)
    _assert_refused(result, 1, "`gpuprov deploy` is not yet available", "a later issue")


def test_destroy_needs_names_or_all(run_gpuprov):
    result = run_gpuprov("lab", "destroy", check=False)
    assert result.returncode == 2
    assert "--all" in result.stderr
