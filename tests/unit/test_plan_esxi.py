"""gpuprov.plan.esxi and the vSphere settings resolution: pure, no vSphere."""

from __future__ import annotations

import pytest

from gpuprov.errors import NotConfirmed, NotFoundError, UsageError
from gpuprov.facts.pci import parse_address
from gpuprov.hypervisors.esxi.connection import settings_from
from gpuprov.plan import esxi as plan


def _fn(address, class_id=0x0300, ids=(0x10DE, 0x2230), capable=True, enabled=False,
        active=False):
    return plan.PciFunction(address, ids[0], ids[1], class_id, "card", capable, enabled, active)


CARD = [_fn("0000:26:00.0"), _fn("0000:26:00.1", class_id=0x0403, ids=(0x10DE, 0x1AEF)),
        _fn("0000:3b:00.0", class_id=0x0302, ids=(0x10DE, 0x1EB8))]


@pytest.mark.parametrize(("memory", "size"), [
    ([48], 128),      # 2 x 48 = 96 -> 128
    ([16], 32),       # 2 x 16 = 32, already a power of two
    ([4], 16),        # a small card still gets 16 GiB
    ([80, 80], 512),  # 2 x 160 = 320 -> 512
    ([2, 2, 2], 64),  # 16 per GPU = 48 -> 64, more than 2 x 6
    ([24.5], 64),     # fractional sizes round up: 49 -> 64
])
def test_mmio_size_is_a_power_of_two_covering_twice_the_memory_and_16g_per_gpu(memory, size):
    assert plan.mmio_size_gib(memory) == size


@pytest.mark.parametrize("memory", [[], [0], [-8]])
def test_mmio_size_needs_positive_gpu_sizes(memory):
    with pytest.raises(ValueError):
        plan.mmio_size_gib(memory)


def test_gpu_memory_comes_from_the_table_or_the_option():
    assert plan.gpu_memory_gib("10de:2230") == 48
    assert plan.gpu_memory_gib("10de:ffff", 12) == 12
    with pytest.raises(UsageError, match="does not know how much memory") as refused:
        plan.gpu_memory_gib("10de:ffff")
    assert "--option gpu_memory=" in refused.value.hint


def test_a_slot_selects_all_its_functions_and_enabling_covers_siblings():
    chosen = plan.card_functions(parse_address("26:00"), CARD, "esx1")
    assert [f.address for f in chosen] == ["0000:26:00.0", "0000:26:00.1"]
    one = plan.card_functions(parse_address("26:00.0"), CARD, "esx1")
    steps = plan.plan_enable(one, CARD, "esx1")
    assert steps.enable == ("0000:26:00.0", "0000:26:00.1") and steps.already == ()


def test_enabling_refuses_a_card_with_an_incapable_function():
    card = [CARD[0], _fn("0000:26:00.1", capable=False)]
    with pytest.raises(plan.EsxiRefused, match=r"0000:26:00\.1 on host esx1 cannot be passed"):
        plan.plan_enable(card[:1], card, "esx1")


def test_unknown_device_is_not_found():
    with pytest.raises(NotFoundError, match=r"no PCI device 0000:99:00\.0"):
        plan.card_functions(parse_address("99:00.0"), CARD, "esx1")


@pytest.mark.parametrize(("function", "message"), [
    (_fn("0000:26:00.0", capable=False), "not passthrough-capable"),
    (_fn("0000:26:00.0"), "passthrough is not enabled"),
    (_fn("0000:26:00.0", enabled=True), "needs a reboot"),
])
def test_only_an_active_device_is_usable(function, message):
    with pytest.raises(plan.EsxiRefused, match=message):
        plan.check_usable([function], "esx1")
    assert plan.check_usable([_fn("0000:26:00.0", enabled=True, active=True)], "esx1") is None


def test_reboot_needed_when_enabled_and_active_differ():
    functions = [_fn("a", enabled=True), _fn("b", enabled=True, active=True),
                 _fn("c", active=True), _fn("d", capable=False, enabled=True)]
    assert plan.reboot_needed(functions) == ["a", "c"]


@pytest.mark.parametrize(("version", "dynamic", "static", "preference", "backing"), [
    (19, True, True, "auto", "dynamic"),
    (17, True, True, "auto", "dynamic"),
    (16, True, True, "auto", "static"),
    (19, False, True, "auto", "static"),
    (19, True, True, "static", "static"),
])
def test_backing_choice(version, dynamic, static, preference, backing):
    assert plan.choose_backing(version, dynamic, static, preference) == backing


@pytest.mark.parametrize(("version", "dynamic", "static", "preference", "message"), [
    (13, True, True, "dynamic", "hardware version is 13"),
    (19, False, True, "dynamic", "does not offer"),
    (13, True, False, "auto", "does not offer the device for DirectPath"),
])
def test_backing_refusals(version, dynamic, static, preference, message):
    with pytest.raises(plan.EsxiRefused, match=message):
        plan.choose_backing(version, dynamic, static, preference)


def test_conversion_of_a_bios_vm_lists_every_change_and_asks():
    current = plan.VmSettings(firmware="bios", extra_config={"pciPassthru.64bitMMIOSizeGB": "256"})
    desired = plan.desired_settings(current, 64, hide_hypervisor=True)
    changes = plan.plan_changes(current, desired)
    assert [str(c) for c in changes] == [
        "firmware: bios -> efi", "secure_boot: (unset) -> False", "memory_locked: False -> True",
        "pciPassthru.use64bitMMIO: (unset) -> TRUE", "hypervisor.cpuid.v0: (unset) -> FALSE"]
    assert desired.extra_config["pciPassthru.64bitMMIOSizeGB"] == "256"  # never shrunk
    assert "convert VM old" in plan.conversion_question("old", changes)
    with pytest.raises(NotConfirmed, match="BIOS firmware") as refused:
        plan.check_converted("old", current, confirmed=False)
    assert "--convert" in refused.value.hint


def test_an_efi_vm_needs_no_yes_and_a_running_vm_is_refused():
    current = plan.VmSettings(firmware="efi", secure_boot=False)
    changes = plan.plan_changes(current, plan.desired_settings(current, 32, False))
    assert plan.conversion_question("vm", changes) is None
    assert plan.check_converted("vm", current, confirmed=None) is None
    with pytest.raises(plan.EsxiRefused, match="poweredOn"):
        plan.check_powered_off("vm", "poweredOn")


def test_restore_undoes_changes_and_removes_added_keys():
    before = plan.VmSettings(firmware="bios", extra_config={"keep": "1"})
    after = plan.desired_settings(before, 32, hide_hypervisor=False)
    now = plan.VmSettings(firmware=after.firmware, secure_boot=after.secure_boot,
                          memory_locked=True, extra_config={"keep": "1", **after.extra_config})
    undo = {c.setting: c.new for c in plan.restore_changes(now, before)}
    assert undo == {"firmware": "bios", "secure_boot": None, "memory_locked": False,
                    "pciPassthru.use64bitMMIO": None, "pciPassthru.64bitMMIOSizeGB": None}


def test_new_vm_writes_every_setting_explicitly():
    desired = plan.desired_settings(plan.VmSettings(), 128, hide_hypervisor=False)
    assert {c.setting: c.new for c in plan.plan_new(desired)} == {
        "firmware": "efi", "secure_boot": False, "memory_locked": True,
        "pciPassthru.use64bitMMIO": "TRUE", "pciPassthru.64bitMMIOSizeGB": "128"}


def test_settings_from_inventory_with_environment_overrides():
    variables = {"ansible_host": "10.0.0.5", "vsphere_user": "root", "vsphere_password": "inv",
                 "vsphere_thumbprint": "AB:" * 31 + "AB"}
    settings = settings_from("esx1", variables, {"GPUPROV_VSPHERE_PASSWORD": "env"})
    assert (settings.host, settings.port, settings.password) == ("10.0.0.5", 443, "env")
    assert settings.thumbprint == "ab" * 32
    assert "env" not in repr(settings)
    assert settings.redact("login env failed") == "login ******** failed"


@pytest.mark.parametrize(("variables", "message"), [
    ({"vsphere_user": "root"}, "no vSphere password"),
    ({"vsphere_user": "u", "vsphere_password": "p", "vsphere_thumbprint": "xyz"},
     "not a certificate fingerprint"),
    ({"vsphere_user": "u", "vsphere_password": "p", "vsphere_port": "0"}, "not a port"),
])
def test_settings_refusals(variables, message):
    with pytest.raises(UsageError, match=message):
        settings_from("esx1", variables, {})


def test_vm_memory_below_one_and_a_half_times_the_gpus_is_warned_with_the_numbers():
    assert plan.memory_warning("vm1", 73728, [48]) is None
    assert plan.memory_warning("vm1", 65536, [24, 24]) == (
        "warning: VM vm1 has 65536 MiB of memory, less than 1.5 x its GPUs' 49152 MiB = "
        "73728 MiB; give it --memory 72G or more")
