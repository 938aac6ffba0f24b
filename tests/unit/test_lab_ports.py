"""The machine-wide SSH port registry: two labs never get the same port, and a port comes back
once the host that held it is gone, however it went."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from gpuprov.errors import EnvironmentProblem
from gpuprov.lab.ports import FIRST_SSH_PORT, PortRegistry, port_free


def registry(tmp_path, bound: frozenset[int] = frozenset()) -> PortRegistry:
    # The bind test is replaced so that the figures do not depend on what this machine runs.
    return PortRegistry(tmp_path / "ports", bindable=lambda port: port not in bound)


def host_json(lab, name: str, port: int | None = None):
    spec = lab / "hosts" / name / "host.json"
    if port is not None:
        spec.parent.mkdir(parents=True)
        spec.write_text(json.dumps({"name": name, "ssh_port": port}))
    return spec


def test_two_labs_get_different_ports_before_either_host_exists(tmp_path):
    # The gap that broke parallel labs: a port is picked, and QEMU has not bound it yet.
    first = registry(tmp_path).reserve([host_json(tmp_path / "lab1", "a")])
    second = registry(tmp_path).reserve([host_json(tmp_path / "lab2", "a"),
                                         host_json(tmp_path / "lab2", "b")])
    assert first == [FIRST_SSH_PORT]
    assert second == [FIRST_SSH_PORT + 1, FIRST_SSH_PORT + 2]


def test_a_host_keeps_its_port_while_its_qemu_is_not_listening(tmp_path):
    spec = host_json(tmp_path / "lab1", "a")
    [port] = registry(tmp_path).reserve([spec])
    host_json(tmp_path / "lab1", "a", port)  # created; power-cycled now, nothing bound
    assert registry(tmp_path).reserve([host_json(tmp_path / "lab2", "b")]) == [port + 1]


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)


def made_by_a_gpuprov_that_exited(tmp_path, port: int, owner) -> None:
    (tmp_path / "ports").mkdir(exist_ok=True)
    (tmp_path / "ports" / str(port)).write_text(json.dumps({"owner": str(owner),
                                                            "pid": dead_pid()}))


def test_a_destroyed_host_frees_its_port_even_without_release(tmp_path):
    spec = host_json(tmp_path / "lab1", "a", FIRST_SSH_PORT)
    made_by_a_gpuprov_that_exited(tmp_path, FIRST_SSH_PORT, spec)
    assert registry(tmp_path).reserve([host_json(tmp_path / "lab2", "b")]) == \
        [FIRST_SSH_PORT + 1]
    spec.unlink()  # e.g. a test lab's directory was deleted
    assert registry(tmp_path).reserve([host_json(tmp_path / "lab2", "c")]) == [FIRST_SSH_PORT]


def test_a_record_whose_maker_died_before_the_host_existed_is_stale(tmp_path):
    made_by_a_gpuprov_that_exited(tmp_path, FIRST_SSH_PORT, host_json(tmp_path / "lab1", "a"))
    ports = tmp_path / "ports"
    (ports / str(FIRST_SSH_PORT + 1)).write_text("not json")
    assert registry(tmp_path).reserve([host_json(tmp_path / "lab2", "b"),
                                       host_json(tmp_path / "lab2", "c")]) == \
        [FIRST_SSH_PORT, FIRST_SSH_PORT + 1]


def test_a_host_recreated_on_another_port_frees_the_old_one(tmp_path):
    spec = host_json(tmp_path / "lab1", "a")
    [port] = registry(tmp_path).reserve([spec])
    host_json(tmp_path / "lab1", "a", port + 7)
    assert registry(tmp_path).reserve([host_json(tmp_path / "lab2", "b")]) == [port]


def test_ports_in_use_or_taken_in_the_lab_are_skipped(tmp_path):
    chosen = registry(tmp_path, bound=frozenset({FIRST_SSH_PORT})).reserve(
        [host_json(tmp_path / "lab1", "a")], taken=frozenset({FIRST_SSH_PORT + 1}))
    assert chosen == [FIRST_SSH_PORT + 2]


def test_an_asked_for_port_that_is_held_is_refused_and_nothing_is_recorded(tmp_path):
    registry(tmp_path).reserve([host_json(tmp_path / "lab1", "a")], first=3000)
    with pytest.raises(EnvironmentProblem, match=r"port 3000 on 127\.0\.0\.1 is already in use"):
        registry(tmp_path).reserve([host_json(tmp_path / "lab2", "b"),
                                    host_json(tmp_path / "lab2", "c")], first=3000 - 1)
    assert sorted(p.name for p in (tmp_path / "ports").iterdir() if p.name.isdigit()) == \
        ["3000"]


def test_release_forgets_only_the_owners_own_record(tmp_path):
    mine, theirs = host_json(tmp_path / "lab1", "a"), host_json(tmp_path / "lab2", "a")
    [port] = registry(tmp_path).reserve([mine])
    registry(tmp_path).release(port, theirs)
    assert (tmp_path / "ports" / str(port)).exists()
    registry(tmp_path).release(port, mine)
    assert not (tmp_path / "ports" / str(port)).exists()


def test_the_bind_test_sees_a_listening_socket():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert not port_free(listener.getsockname()[1])
