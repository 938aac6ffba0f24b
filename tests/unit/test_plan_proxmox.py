"""Proxmox VE passthrough decisions, without an API: card choice, who uses it, which path,
the MMIO window, what a VM must become."""

from __future__ import annotations

import pytest

from gpuprov.errors import NotFoundError, UsageError
from gpuprov.facts.pci import parse_address
from gpuprov.plan import proxmox as plan

# GET /nodes/{node}/hardware/pci entries, in PVE's field names
LISTING = [
    {"id": "0000:26:00.0", "class": "0x030000", "vendor": "0x10de", "device": "0x1d01",
     "vendor_name": "NVIDIA Corporation", "device_name": "GP108 [GeForce GT 1030]",
     "subsystem_vendor": "0x1458", "subsystem_device": "0x3771", "iommugroup": 15},
    {"id": "0000:26:00.1", "class": "0x040300", "vendor": "0x10de", "device": "0x0fb8",
     "vendor_name": "NVIDIA Corporation", "device_name": "GP108 High Definition Audio",
     "iommugroup": 15},
    {"id": "0000:27:00.0", "class": "0x010802", "vendor": "0x144d", "device": "0xa808",
     "device_name": "NVMe SSD Controller SM981/PM981/PM983", "iommugroup": 16},
]
FUNCTIONS = plan.pci_functions(LISTING)

# /sys/bus/pci/devices/ADDR/resource of a GT 1030 and of an RTX 3090 with resizable BAR, in
# the kernel's format (start, end, flags; BARs 0-5 then the ROM); addresses written for here.
GT1030_RESOURCE = """\
0x00000000f6000000 0x00000000f6ffffff 0x0000000000040200
0x00000000e0000000 0x00000000efffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000f0000000 0x00000000f1ffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x000000000000e000 0x000000000000e07f 0x0000000000040101
0x00000000f7000000 0x00000000f707ffff 0x0000000000046200
"""
RTX3090_RESOURCE = """\
0x00000000fb000000 0x00000000fbffffff 0x0000000000040200
0x0000007800000000 0x0000007fffffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000008000000000 0x0000008001ffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x000000000000f000 0x000000000000f07f 0x0000000000040101
"""


def test_choose_card_takes_every_function_of_a_slot():
    card = plan.choose_card(parse_address("26:00"), FUNCTIONS, "pve1")
    assert card.addresses == ["0000:26:00.0", "0000:26:00.1"]
    assert card.hostpci_path == "0000:26:00"
    assert card.display.ids == "10de:1d01"
    one = plan.choose_card(parse_address("0000:26:00.0"), FUNCTIONS, "pve1")
    assert one.hostpci_path == "0000:26:00.0"


def test_choose_card_refuses_missing_non_gpu_and_no_iommu():
    with pytest.raises(NotFoundError, match="no PCI device at 0000:2a:00") as missing:
        plan.choose_card(parse_address("2a:00"), FUNCTIONS, "pve1")
    assert missing.value.hint == "its display devices: 0000:26:00.0"
    with pytest.raises(plan.ProxmoxRefused, match="not a GPU"):
        plan.choose_card(parse_address("27:00"), FUNCTIONS, "pve1")
    no_iommu = plan.pci_functions([{**LISTING[0], "iommugroup": -1}])
    with pytest.raises(plan.ProxmoxRefused, match="IOMMU is off") as refused:
        plan.choose_card(parse_address("26:00"), no_iommu, "pve1")
    assert "gpuprov host setup pve1" in refused.value.hint


def test_hostpci_users_finds_raw_addresses_and_mappings_on_this_node_only():
    card = plan.choose_card(parse_address("26:00"), FUNCTIONS, "pve1")
    mappings = plan.parse_mappings([
        {"id": "gt1030", "map": ["node=pve1,path=0000:26:00,id=10de:1d01,iommugroup=15"]},
        {"id": "elsewhere", "map": ["node=pve2,path=0000:26:00,id=10de:1d01"]},
    ])
    configs = {
        "100": {"hostpci0": "26:00.1,pcie=1"},  # short form, one function of the card
        "101": {"hostpci1": "mapping=gt1030"},
        "102": {"hostpci0": "mapping=elsewhere"},  # pve2's 26:00, another card
        "103": {"hostpci0": "host=0000:2d:00,pcie=1", "name": "other"},
    }
    assert plan.hostpci_users(card, "pve1", configs, mappings) == {
        "100": "hostpci0", "101": "hostpci1"}
    with pytest.raises(plan.ProxmoxRefused, match=r"VM 100 \(hostpci0\), VM 101"):
        plan.check_free(card, "pve1", {"100": "hostpci0", "101": "hostpci1"})
    plan.check_free(card, "pve1", {})


def test_only_a_root_pam_password_login_may_use_the_raw_address():
    assert plan.may_use_raw_address("root@pam", is_token=False)
    assert not plan.may_use_raw_address("root@pam", is_token=True)
    assert not plan.may_use_raw_address("admin@pve", is_token=False)


def test_mapping_entry_and_check():
    card = plan.choose_card(parse_address("26:00"), FUNCTIONS, "pve1")
    assert plan.mapping_name(card) == "gpu-26-00"
    assert plan.mapping_entry(card, "pve1") == (
        "node=pve1,path=0000:26:00,id=10de:1d01,iommugroup=15,subsystem-id=1458:3771")
    good, other = plan.parse_mappings([
        {"id": "a", "map": ["node=pve1,path=0000:26:00,id=10de:1d01"]},
        {"id": "b", "map": ["node=pve1,path=0000:2d:00,id=10de:2204"]}])
    plan.check_mapping(good, card, "pve1")
    with pytest.raises(plan.ProxmoxRefused, match="maps 0000:2d:00 on node pve1, not"):
        plan.check_mapping(other, card, "pve1")
    with pytest.raises(plan.ProxmoxRefused, match="no entry for node pve2"):
        plan.check_mapping(good, card, "pve2")


def test_hostpci_value_and_free_key():
    card = plan.choose_card(parse_address("26:00"), FUNCTIONS, "pve1")
    assert plan.hostpci_value(card, mapping=None, x_vga=False) == "host=0000:26:00,pcie=1"
    assert plan.hostpci_value(card, mapping="gt", x_vga=True) == "mapping=gt,pcie=1,x-vga=1"
    assert plan.free_hostpci_key({"hostpci0": "x", "hostpci2": "y"}) == "hostpci1"
    with pytest.raises(plan.ProxmoxRefused, match="all 16 hostpci"):
        plan.free_hostpci_key({f"hostpci{i}": "x" for i in range(16)})


def test_parse_resource_keeps_memory_bars_and_their_width():
    bars = plan.parse_resource(GT1030_RESOURCE)
    assert [(b.index, b.size, b.is_64bit) for b in bars] == [
        (0, 16 * 2**20, False), (1, 256 * 2**20, True), (3, 32 * 2**20, True)]


def test_small_bars_fit_ovmfs_default_window():
    mmio = plan.plan_mmio({"0000:26:00.0": plan.parse_resource(GT1030_RESOURCE)},
                          raw_allowed=True, cpu="host", args=None)
    assert mmio.needed == 0 and mmio.changes == {}
    assert "fit OVMF's default" in mmio.explanation


def test_a_large_bar_gets_an_exact_window_as_root_and_phys_bits_otherwise():
    bars = {"0000:2d:00.0": plan.parse_resource(RTX3090_RESOURCE)}
    root = plan.plan_mmio(bars, raw_allowed=True, cpu="host", args="-no-hpet")
    # 32 GiB + 32 MiB of 64-bit BARs: doubled and rounded up to a power of two
    assert root.needed == 128 * 2**30
    assert root.changes == {"args": "-no-hpet -fw_cfg name=opt/ovmf/X-PciMmio64Mb,"
                                    "string=131072"}
    token = plan.plan_mmio(bars, raw_allowed=False, cpu="host,flags=+pcid", args=None)
    assert token.changes == {"cpu": "host,flags=+pcid,phys-bits=host"}
    assert "BAR0 is 0M" in token.explanation


def test_create_params_build_a_q35_ovmf_vm_with_pinned_memory():
    vm = plan.NewVm(vmid=105, name="gpu-26-00", cores=8, memory_mib=16384, disk_gib=64,
                    storage="local-lvm", iso="local:iso/debian-12.iso")
    params = plan.create_params(vm, "host=0000:26:00,pcie=1", plan.MmioPlan(0))
    assert params["machine"] == "q35" and params["bios"] == "ovmf"
    assert params["efidisk0"] == "local-lvm:1,efitype=4m,pre-enrolled-keys=0"
    assert params["balloon"] == 0 and params["cpu"] == "host"
    assert params["scsi0"].startswith("local-lvm:64,")
    assert params["ide2"] == "local:iso/debian-12.iso,media=cdrom"
    assert params["hostpci0"] == "host=0000:26:00,pcie=1"


def test_conversion_lists_only_what_must_change_and_undo_restores_it():
    legacy = {"name": "old", "memory": "4096", "cpu": "x86-64-v2-AES", "digest": "d"}
    changes = plan.conversion(legacy, "local-lvm")
    assert changes == {"machine": "q35", "bios": "ovmf",
                       "efidisk0": "local-lvm:1,efitype=4m,pre-enrolled-keys=0", "balloon": 0}
    assert any("legacy BIOS" in line for line in plan.describe_conversion(legacy, changes))
    ready = {"machine": "pc-q35-9.0", "bios": "ovmf", "efidisk0": "x", "balloon": "0"}
    assert plan.conversion(ready, "local-lvm") == {}
    undo = plan.undo_params({"machine": "pc", "bios": "seabios"},
                            ["machine", "bios", "efidisk0", "hostpci0"])
    assert undo == {"machine": "pc", "bios": "seabios", "delete": "efidisk0,hostpci0"}


@pytest.mark.parametrize(("name", "ok"), [
    ("gpu-vm", True), ("a", True), ("vm1.lab.example", True), ("A1-b2", True),
    ("a_b", False), ("-a", False), ("a-", False), ("a..b", False), ("a b", False), ("", False),
])
def test_vm_names_follow_pves_dns_name_format(name, ok):
    if ok:
        plan.check_vm_name(name)
    else:
        with pytest.raises(UsageError):
            plan.check_vm_name(name)


@pytest.mark.parametrize(("mapping", "ok"), [
    ("gpu-26-00", True), ("ab", True), ("A_1", True), ("x", False), ("1gpu", False),
    ("gpu.1", False),
])
def test_mapping_ids_follow_pves_configid_format(mapping, ok):
    if ok:
        plan.check_mapping_id(mapping)
    else:
        with pytest.raises(UsageError):
            plan.check_mapping_id(mapping)
