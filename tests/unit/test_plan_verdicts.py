"""Verdicts and refusals, on facts parsed from real lab captures and then varied one fact at a
time (the variation each refusal needs: a device moved into the GPU's group, the IOMMU off)."""

from __future__ import annotations

import dataclasses

import pytest

from gpuprov.errors import NotFoundError, UsageError
from gpuprov.facts import parse_address
from gpuprov.facts.cmdline import KernelCmdline
from gpuprov.facts.host import ConfiguredCmdline, HostFacts
from gpuprov.plan import (
    NEEDS_SETUP,
    READY,
    UNSAFE,
    gpu_verdict,
    gpu_verdicts,
    inspect_exit_code,
    kernel_params,
    select_gpus,
)
from tests.unit.probe_facts import load, regroup


@pytest.fixture
def intel() -> HostFacts:
    return load("lab-intel-grub")  # GPU 0000:01:00 alone in group 5


def only_verdict(facts: HostFacts):
    [gpu] = facts.gpus
    return gpu_verdict(facts, gpu)


def test_stock_lab_host_needs_setup(intel):
    verdict = only_verdict(intel)
    assert verdict.status == NEEDS_SETUP
    assert verdict.missing == (
        "0000:01:00.0 is on bochs-drm, not vfio-pci",
        "0000:01:00.1 is on snd_hda_intel, not vfio-pci",
        "/dev/vfio/5 does not exist",
    )
    assert verdict.refusals == () and verdict.group_mates == ()
    assert inspect_exit_code([verdict]) == 10


def test_group_shared_with_a_foreign_device_is_unsafe_and_names_it(intel):
    verdict = only_verdict(regroup(intel, "0000:00:1f.3", 5))  # the SMBus controller
    assert verdict.status == UNSAFE
    [refusal] = verdict.refusals
    assert "0000:01:00 shares IOMMU group 5" in refusal.reason
    assert "0000:00:1f.3 (SMBus: Intel Corporation 82801I (ICH9 Family) SMBus Controller " \
           "[8086:2930])" in refusal.reason
    assert "a group is passed through whole" in refusal.fix and not refusal.overridable
    assert [d.address for d in verdict.group_mates] == ["0000:00:1f.3"]
    assert inspect_exit_code([verdict]) == 20


def test_a_bridge_in_the_group_is_not_a_reason(intel):
    verdict = only_verdict(regroup(intel, "0000:00:03.0", 5))  # the card's root port
    assert verdict.status == NEEDS_SETUP
    assert [d.address for d in verdict.group_mates] == ["0000:00:03.0"]


def test_root_disk_controller_in_the_group_is_unsafe(intel):
    assert intel.root_disk_controllers == ("0000:00:01.0",)
    verdict = only_verdict(regroup(intel, "0000:00:01.0", 5))
    assert verdict.status == UNSAFE
    [refusal] = verdict.refusals
    assert refusal.reason.startswith(
        "IOMMU group 5 of 0000:01:00 holds the root disk's controller 0000:00:01.0")
    assert "root disk" in refusal.fix


def test_management_nic_in_the_group_is_unsafe(intel):
    verdict = only_verdict(regroup(intel, "0000:00:02.0", 5))
    [refusal] = verdict.refusals
    assert "holds the management NIC 0000:00:02.0" in refusal.reason
    assert "(enp0s2)" in refusal.reason


def test_no_iommu_in_firmware_is_unsafe_with_the_vendors_fix():
    facts = load("lab-no-iommu-grub")
    verdict = only_verdict(facts)
    assert verdict.status == UNSAFE
    [refusal] = verdict.refusals
    assert "no ACPI DMAR table" in refusal.reason
    assert refusal.fix.startswith("enable VT-d")
    amd = dataclasses.replace(facts, cpu_vendor="amd")
    [refusal] = only_verdict(amd).refusals
    assert "no ACPI IVRS table" in refusal.reason
    assert "enable AMD-Vi (SVM/IOMMU) in the firmware setup" in refusal.fix


def test_boot_vga_is_a_warning_that_needs_yes_not_a_refusal(intel):
    verdict = only_verdict(intel)
    [warning] = verdict.warnings
    assert warning.overridable and "--yes" in warning.fix
    assert "0000:01:00.0 is the boot VGA device" in warning.reason
    assert "the only display device" in warning.reason


def test_with_two_gpus_only_the_boot_vga_one_warns_and_another_can_be_primary():
    facts = load("lab-two-gpus")
    first, second = gpu_verdicts(facts, facts.gpus)
    [warning] = first.warnings
    assert "only display device" not in warning.reason
    assert "make another GPU the primary display" in warning.fix
    assert second.warnings == ()


def test_ready_when_bound_to_vfio_pci_with_its_group_node(intel):
    devices = tuple(dataclasses.replace(d, driver="vfio-pci") if d.slot == "0000:01:00" else d
                    for d in intel.devices)
    facts = dataclasses.replace(intel, devices=devices, dev_vfio=("5", "vfio"))
    verdict = only_verdict(facts)
    assert (verdict.status, verdict.missing, verdict.warnings) == (READY, (), ())
    assert inspect_exit_code([verdict]) == 0


def test_vfio_pci_without_the_group_node_still_needs_setup(intel):
    devices = tuple(dataclasses.replace(d, driver="vfio-pci") if d.slot == "0000:01:00" else d
                    for d in intel.devices)
    verdict = only_verdict(dataclasses.replace(intel, devices=devices))
    assert verdict.missing == ("/dev/vfio/5 does not exist",)


def test_exit_codes():
    assert inspect_exit_code([]) == 3


# --- naming GPUs ----------------------------------------------------------------------------


def test_select_by_slot_or_function_in_any_form(intel):
    for typed in ("01:00", "01:00.1", "0000:01:00.0"):
        [gpu] = select_gpus(intel, [parse_address(typed)], "hi")
        assert gpu.slot == "0000:01:00"


def test_select_nothing_named_means_every_gpu():
    facts = load("lab-two-gpus")
    assert [g.slot for g in select_gpus(facts, [])] == ["0000:01:00", "0000:02:00"]
    named = select_gpus(facts, [parse_address("02:00"), parse_address("2:0.1")])
    assert [g.slot for g in named] == ["0000:02:00"]


def test_select_an_absent_address(intel):
    with pytest.raises(NotFoundError) as refused:
        select_gpus(intel, [parse_address("26:00")], "hi")
    assert refused.value.message == "no PCI device 0000:26:00 on hi"
    assert refused.value.hint == "the GPUs there are: 0000:01:00"


def test_select_a_device_that_is_not_a_gpu(intel):
    with pytest.raises(UsageError) as refused:
        select_gpus(intel, [parse_address("00:1f.2")], "hi")
    assert "0000:00:1f.2 on hi is not a GPU: SATA controller" in refused.value.message


# --- the kernel command line ----------------------------------------------------------------


def with_cmdline(facts: HostFacts, configured: str, **changes) -> HostFacts:
    return dataclasses.replace(
        facts, configured_cmdline=ConfiguredCmdline("/etc/default/grub",
                                                     KernelCmdline.parse(configured)), **changes)


def test_intel_kernel_that_enables_the_iommu_needs_nothing(intel):
    assert intel.kernel_enables_intel_iommu_by_default  # Debian: ..._DEFAULT_ON_INTGPU_OFF=y
    params = kernel_params(intel)
    assert (params.add, params.remove) == ((), ())
    assert "intel_iommu=on is not needed" in params.reasons[0]


def test_intel_kernel_without_default_on_gets_intel_iommu_on(intel):
    config = {**intel.kernel_config, "CONFIG_INTEL_IOMMU_DEFAULT_ON_INTGPU_OFF": "n"}
    params = kernel_params(dataclasses.replace(intel, kernel_config=config))
    assert params.add == ("intel_iommu=on",)
    unreadable = kernel_params(dataclasses.replace(intel, kernel_config={}))
    assert unreadable.add == ("intel_iommu=on",)
    already = kernel_params(with_cmdline(intel, "quiet intel_iommu=on,igfx_off",
                                         kernel_config=config))
    assert already.add == ()


def test_intel_iommu_off_is_replaced(intel):
    params = kernel_params(with_cmdline(intel, "quiet intel_iommu=off"))
    assert (params.add, params.remove) == (("intel_iommu=on",), ("intel_iommu=off",))


def test_amd_never_gets_amd_iommu_on_but_loses_amd_iommu_off():
    amd = load("lab-amd-systemd-boot")
    assert kernel_params(amd).add == ()
    params = kernel_params(with_cmdline(amd, "quiet amd_iommu=off iommu=off"))
    assert params.add == () and set(params.remove) == {"amd_iommu=off", "iommu=off"}
    assert not any("amd_iommu=on" in p for p in kernel_params(amd, passthrough=True).add)


def test_iommu_pt_only_when_asked(intel):
    assert "iommu=pt" not in kernel_params(intel).add
    assert kernel_params(intel, passthrough=True).add == ("iommu=pt",)
    assert kernel_params(with_cmdline(intel, "quiet iommu=pt"), passthrough=True).add == ()


def test_the_running_cmdline_is_checked_when_the_configured_one_is_unknown(intel):
    facts = dataclasses.replace(intel, configured_cmdline=ConfiguredCmdline(None, None),
                                cmdline=KernelCmdline.parse("ro intel_iommu=off"))
    params = kernel_params(facts)
    assert params.checked == "running" and params.remove == ("intel_iommu=off",)


def test_an_inactive_iommu_says_what_the_command_line_needs(intel):
    config = {**intel.kernel_config, "CONFIG_INTEL_IOMMU_DEFAULT_ON_INTGPU_OFF": "n"}
    facts = dataclasses.replace(intel, kernel_config=config, iommu_groups={},
                                devices=tuple(dataclasses.replace(d, iommu_group=None)
                                              for d in intel.devices))
    verdict = only_verdict(facts)
    assert verdict.status == NEEDS_SETUP
    assert verdict.missing[0] == ("the IOMMU is off: add intel_iommu=on on the kernel command "
                                  "line, then reboot")
    assert "unknown while the IOMMU is off" in verdict.missing[1]
