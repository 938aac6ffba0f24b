"""What `host setup` asks the roles for, or why it refuses: on real lab captures, varied one
fact at a time like the verdict tests."""

from __future__ import annotations

import dataclasses

import pytest

from gpuprov.errors import UsageError
from gpuprov.facts.host import HostFacts
from gpuprov.plan import SetupRefused, choose_gpus, gpu_verdicts, plan_setup, unmet
from tests.unit.probe_facts import load, regroup


@pytest.fixture
def intel() -> HostFacts:
    return load("lab-intel-grub")  # one GPU, 0000:01:00, alone in group 5, the boot VGA


def plan(facts: HostFacts, gpus=None, **accepted):
    chosen = choose_gpus(facts, gpus or [], "lab1")
    return plan_setup(facts, gpu_verdicts(facts, chosen), host="lab1", **accepted)


def test_the_only_gpu_is_claimed_by_id_once_its_console_role_is_accepted(intel):
    setup = plan(intel, assume_yes=True)
    assert setup.addresses == ("0000:01:00.0", "0000:01:00.1")
    assert setup.bind_mode == "ids"
    assert "claimed by vendor:device id (1234:1111, 8086:293e)" in setup.reasons[0]
    assert not setup.ready
    assert setup.host_vars() == {
        "vfio_pci_addresses": ["0000:01:00.0", "0000:01:00.1"],
        "vfio_bind_mode": "ids",
        "iommu_passthrough_mode": False,
    }


def test_the_boot_vga_needs_yes(intel):
    with pytest.raises(SetupRefused) as refused:
        plan(intel)
    assert refused.value.exit_code == 20
    assert "not setting up lab1, nothing was changed" in refused.value.message
    assert "0000:01:00.0 is the boot VGA device" in refused.value.message
    assert "confirm with --yes" in refused.value.hint


@pytest.mark.parametrize(("mate", "what"), [
    ("0000:00:01.0", "holds the root disk's controller"),
    ("0000:00:02.0", "holds the management NIC"),
])
def test_root_disk_and_management_nic_are_refused_even_when_everything_is_accepted(
        intel, mate, what):
    with pytest.raises(SetupRefused) as refused:
        plan(regroup(intel, mate, 5), assume_yes=True, accept_shared_group=True)
    assert what in refused.value.message and mate in refused.value.message


def test_a_shared_group_is_refused_unless_accepted_and_then_the_mate_goes_along(intel):
    shared = regroup(intel, "0000:00:1f.3", 5)  # the SMBus controller
    with pytest.raises(SetupRefused) as refused:
        plan(shared, assume_yes=True)
    assert "--accept-shared-group" in refused.value.hint

    setup = plan(shared, assume_yes=True, accept_shared_group=True)
    assert setup.addresses == ("0000:00:1f.3", "0000:01:00.0", "0000:01:00.1")
    # By address, so that no other device with the SMBus controller's ids is taken.
    assert setup.bind_mode == "address"


def test_a_bridge_in_the_group_stays_with_the_host(intel):
    setup = plan(regroup(intel, "0000:00:03.0", 5), assume_yes=True)
    assert setup.addresses == ("0000:01:00.0", "0000:01:00.1")


def test_no_iommu_in_firmware_is_refused():
    with pytest.raises(SetupRefused) as refused:
        plan(load("lab-no-iommu-grub"), assume_yes=True)
    assert "the firmware exposes no IOMMU" in refused.value.message
    assert refused.value.hint.startswith("enable VT-d")


def test_two_identical_cards_need_gpu_and_then_go_by_address():
    facts = load("lab-two-gpus")
    with pytest.raises(UsageError) as several:
        plan(facts, assume_yes=True)
    assert "lab1 has 2 GPUs: 0000:01:00, 0000:02:00" in several.value.message
    assert "--gpu" in several.value.hint

    [second] = [g for g in facts.gpus if g.slot == "0000:02:00"]
    setup = plan(facts, [second])  # not the boot VGA: no --yes needed
    assert setup.addresses == ("0000:02:00.0", "0000:02:00.1")
    assert setup.bind_mode == "address"
    assert "0000:01:00.0, 0000:01:00.1 carry the same vendor:device ids" in setup.reasons[0]


def test_ready_means_nothing_to_do_unless_iommu_pt_is_asked_for(intel):
    devices = tuple(dataclasses.replace(d, driver="vfio-pci") if d.slot == "0000:01:00" else d
                    for d in intel.devices)
    bound = dataclasses.replace(intel, devices=devices, dev_vfio=("5", "vfio"))
    assert plan(bound).ready  # a ready card is no longer a console to warn about
    with_pt = plan(bound, iommu_passthrough_mode=True)
    assert not with_pt.ready
    assert with_pt.host_vars()["iommu_passthrough_mode"] is True
    assert "iommu=pt goes on the kernel command line" in with_pt.reasons[-1]


def test_a_host_without_gpus():
    facts = load("lab-intel-grub")
    no_gpus = dataclasses.replace(facts, devices=tuple(d for d in facts.devices
                                                      if d.slot != "0000:01:00"))
    with pytest.raises(UsageError) as none:
        choose_gpus(no_gpus, [], "lab1")
    assert "lab1 has no GPU" in none.value.message


def _bound(facts: HostFacts, addresses, group: int) -> HostFacts:
    devices = tuple(dataclasses.replace(d, driver="vfio-pci") if d.address in addresses else d
                    for d in facts.devices)
    return dataclasses.replace(facts, devices=devices, dev_vfio=(str(group), "vfio"))


def test_after_setup_an_accepted_shared_group_is_ready_once_every_member_is_bound(intel):
    shared = regroup(intel, "0000:00:1f.3", 5)
    setup = plan(shared, assume_yes=True, accept_shared_group=True)
    card_only = _bound(shared, ("0000:01:00.0", "0000:01:00.1"), 5)
    chosen = choose_gpus(card_only, [], "lab1")
    assert unmet(setup, card_only, gpu_verdicts(card_only, chosen)) == [
        "0000:00:1f.3 is on i801_smbus, not vfio-pci"]
    everything = _bound(shared, setup.addresses, 5)
    assert unmet(setup, everything, gpu_verdicts(everything, chosen)) == []
    # Not accepted, the same state still counts against it.
    strict = dataclasses.replace(setup, accepted=frozenset())
    assert "shares IOMMU group 5" in unmet(strict, everything,
                                           gpu_verdicts(everything, chosen))[0]
