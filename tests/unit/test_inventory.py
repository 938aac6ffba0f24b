"""Inventory host names -> SSH targets, through Ansible's own inventory code (no network)."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest

from gpuprov.errors import NotFoundError, UsageError
from gpuprov.inventory import known_hosts_from_ssh_args, resolve
from gpuprov.transport.ssh import SshTarget


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("-o UserKnownHostsFile=/lab/hosts/pve1/known_hosts -o StrictHostKeyChecking=yes",
         "/lab/hosts/pve1/known_hosts"),
        ("-oUserKnownHostsFile=/a/kh", "/a/kh"),
        ("-o 'UserKnownHostsFile /a/kh /b/kh'", "/a/kh"),
        ("-o userknownhostsfile=~/kh", "~/kh"),
        ("-o StrictHostKeyChecking=no", None),
        ("", None),
    ],
)
def test_known_hosts_from_ssh_args(args, expected):
    assert known_hosts_from_ssh_args(args) == expected


def test_lab_style_yaml_inventory(tmp_path):
    # The shape `gpuprov lab` writes (gpuprov.lab.spec.inventory).
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        "all:\n  children:\n    lab:\n      hosts:\n        pve1:\n"
        "          ansible_host: 127.0.0.1\n          ansible_port: 2222\n"
        "          ansible_user: root\n"
        f"          ansible_ssh_private_key_file: {tmp_path}/id_ed25519\n"
        f"          ansible_ssh_common_args: -o UserKnownHostsFile={tmp_path}/kh"
        " -o StrictHostKeyChecking=yes\n")
    assert resolve("pve1", inventory) == SshTarget(
        "127.0.0.1", 2222, "root", tmp_path / "id_ed25519", tmp_path / "kh")


def test_ini_inventory_with_group_vars_and_defaults(tmp_path):
    (tmp_path / "hosts.ini").write_text(
        "[gpu]\ngpu1 ansible_host=10.0.0.5\ngpu2.example.org\n")
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "gpu.yml").write_text(
        "ansible_user: admin\nansible_port: '{{ 2000 + 22 }}'\n")
    target = resolve("gpu1", tmp_path / "hosts.ini")
    assert (target.host, target.port, target.user) == ("10.0.0.5", 2022, "admin")
    assert target.key_file is None  # the user's own keys and agent
    assert target.known_hosts == Path("~/.ssh/known_hosts").expanduser()
    bare = resolve("gpu2.example.org", tmp_path / "hosts.ini")
    assert bare.host == "gpu2.example.org"


def test_default_user_is_the_local_one(tmp_path):
    (tmp_path / "hosts.ini").write_text("box\n")
    assert resolve("box", tmp_path / "hosts.ini").user == getpass.getuser()


def test_unknown_host_names_the_inventory_and_its_hosts(tmp_path):
    (tmp_path / "hosts.ini").write_text("[gpu]\ngpu1\ngpu2\n")
    with pytest.raises(NotFoundError) as missing:
        resolve("gpu3", tmp_path / "hosts.ini")
    assert missing.value.message == f"no host named 'gpu3' in the inventory {tmp_path}/hosts.ini"
    assert missing.value.hint == "the hosts there are: gpu1, gpu2"


def test_missing_inventory(tmp_path):
    with pytest.raises(NotFoundError) as missing:
        resolve("gpu1", tmp_path / "nope.yml")
    assert "does not exist" in missing.value.message and "gpuprov lab up" in missing.value.hint


SECRET = "s3cr3t-token-value"


@pytest.mark.parametrize("content", [
    f"all:\n  vars:\n    pve_token: {SECRET}\n   broken: [\n",  # YAML that does not parse
    f'pve_token: "{SECRET}"\n\tbroken: [\n',  # a vars file given as the inventory
    bytes(range(256)) * 4,  # binary
])
def test_an_unparsable_inventory_is_bad_input_and_its_lines_are_never_printed(
        tmp_path, capfd, content):
    path = tmp_path / ("inventory.yml" if isinstance(content, str) else "inventory.bin")
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(UsageError) as raised:
        resolve("pve1", path)
    assert f"{path} is not an Ansible inventory" in raised.value.message
    assert f"ansible-inventory -i {path} --list" in raised.value.hint
    out, err = capfd.readouterr()
    assert SECRET not in out + err + raised.value.message


def test_a_directory_without_an_inventory_is_bad_input(tmp_path):
    (tmp_path / "notes.txt").write_bytes(b"\xff\xfe not an inventory")
    with pytest.raises(UsageError, match="could parse any file in it"):
        resolve("pve1", tmp_path)


def test_an_empty_inventory_parses_and_has_no_hosts(tmp_path):
    (tmp_path / "empty.ini").write_text("")
    with pytest.raises(NotFoundError, match="no host named 'pve1'") as raised:
        resolve("pve1", tmp_path / "empty.ini")
    assert raised.value.hint == "the hosts there are: none"
