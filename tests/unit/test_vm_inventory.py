"""The inventory gpuprov keeps of its VMs (gpuprov/vm_inventory.py): pure parts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gpuprov import vm_inventory
from gpuprov.errors import UsageError

VARS = vm_inventory.host_vars(address="192.0.2.10", user="debian", hypervisor="libvirt",
                              host="kvm1", vm_id="4b1d8c1e", devices=["hostdev 0000:01:00.0"])


def test_recording_again_replaces_only_that_vm():
    kept = {"all": {"children": {"gpu_hosts": {"hosts": {"pve1": None}},
                                 "gpuprov_vms": {"hosts": {"other": {"ansible_host": "x"}}}},
                    "vars": {"ansible_python_interpreter": "auto_silent"}}}
    once = vm_inventory.merged(kept, "ml", VARS)
    again = vm_inventory.merged(vm_inventory.parse(once, Path("f")), "ml",
                                {**VARS, "ansible_host": "192.0.2.11"})
    document = yaml.safe_load(again)
    assert document["all"]["vars"] == {"ansible_python_interpreter": "auto_silent"}
    assert document["all"]["children"]["gpu_hosts"] == {"hosts": {"pve1": None}}
    hosts = document["all"]["children"]["gpuprov_vms"]["hosts"]
    assert hosts["other"] == {"ansible_host": "x"}
    assert hosts["ml"]["ansible_host"] == "192.0.2.11"
    assert again.startswith("# Managed by gpuprov")


def test_an_empty_file_becomes_an_inventory():
    document = yaml.safe_load(vm_inventory.merged(vm_inventory.parse("", Path("f")), "ml", VARS))
    assert document == {"all": {"children": {"gpuprov_vms": {"hosts": {"ml": VARS}}}}}


@pytest.mark.parametrize("text", ["all: [\n", "- a\n- b\n", "all: [1, 2]\n"])
def test_a_file_that_is_no_inventory_is_bad_input(text):
    with pytest.raises(UsageError, match="is not a YAML inventory"):
        vm_inventory.parse(text, Path("vms.yml"))


@pytest.mark.parametrize(("text", "ok"), [
    ("192.0.2.10", True), ("2001:db8::1", True), ("gpu-vm1.lab.example", True),
    ("gpu-vm1", True), ("300.1.1.1", False), ("1.2.3", False), ("a b", False),
    ("-bad.example", False), ("", False),
])
def test_addresses(text, ok):
    if ok:
        assert vm_inventory.check_address(text)
    else:
        with pytest.raises(UsageError):
            vm_inventory.check_address(text)


def test_host_names_and_the_printed_entry():
    assert vm_inventory.host_name("my vm (test)") == "my-vm-test"
    entry = yaml.safe_load(vm_inventory.entry_text("ml", {"ansible_user": "debian"}))
    assert entry == {"gpuprov_vms": {"hosts": {"ml": {"ansible_host": "ADDRESS",
                                                      "ansible_user": "debian"}}}}
