"""The pure description of lab hosts: names, QEMU command line, disk layout, inventory."""

from pathlib import Path

import pytest

from gpuprov.errors import UsageError
from gpuprov.lab.spec import (
    GIB,
    MIB,
    HostFiles,
    HostSpec,
    boot_failure,
    checkpoint_blocker,
    disk_layout,
    inventory,
    machine_key,
    qemu_argv,
    recipe_hash,
    stage_key,
    stalled_boot,
    validate_names,
)


@pytest.mark.parametrize("name", ["a", "pve1", "gpu-host-2", "x" * 32])
def test_valid_names(name):
    assert validate_names([name]) == [name]


@pytest.mark.parametrize("name", ["", "A", "1abc", "ab-", "a_b", "a.b", "x" * 33, "../x"])
def test_invalid_names_are_refused_with_a_hint(name):
    with pytest.raises(UsageError) as error:
        validate_names([name])
    assert "lower-case" in error.value.hint


def test_a_name_given_twice_is_refused():
    with pytest.raises(UsageError, match="named twice"):
        validate_names(["a", "b", "a"])


@pytest.mark.parametrize(
    ("field", "value"),
    [("iommu", "arm"), ("boot", "lilo"), ("gpus", 0), ("memory_mib", 64), ("cpus", 0)],
)
def test_host_spec_refuses_bad_values(field, value):
    with pytest.raises(UsageError):
        HostSpec(name="a", **{field: value})


def test_host_spec_round_trips_through_json():
    spec = HostSpec(name="a", iommu="amd", boot="systemd-boot", gpus=2, ssh_port=2230)
    assert HostSpec.from_json(spec.to_json()) == spec


def _argv(**spec):
    return qemu_argv(
        HostSpec(name="a", ssh_port=2222, **spec),
        HostFiles(Path("/lab/hosts/a")),
        qemu="qemu-system-x86_64",
        ovmf_code=Path("/fw/CODE.fd"),
        authorized_keys=Path("/lab/id.pub"),
    )


def _devices(argv):
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "-device"]


def test_intel_host_has_the_viommu_before_every_pci_device():
    devices = _devices(_argv(iommu="intel"))
    assert devices[0] == "intel-iommu,intremap=on,caching-mode=on"
    assert "-cpu" in (argv := _argv(iommu="intel"))
    assert argv[argv.index("-cpu") + 1] == "max,vendor=GenuineIntel"


def test_amd_host_has_amd_iommu_and_an_amd_cpu():
    argv = _argv(iommu="amd")
    assert _devices(argv)[0] == "amd-iommu"
    assert argv[argv.index("-cpu") + 1] == "max,vendor=AuthenticAMD"


def test_host_without_iommu_has_no_viommu():
    assert not any("iommu" in d for d in _devices(_argv(iommu="none")))


def test_each_stand_in_gpu_is_two_functions_in_its_own_pcie_slot():
    devices = _devices(_argv(gpus=2))
    for index in range(2):
        port = f"gpu{index}"
        assert f"pcie-root-port,id={port},chassis={index + 1}" in devices
        assert f"VGA,bus={port},addr=00.0,multifunction=on" in devices
        assert f"ich9-intel-hda,bus={port},addr=00.1" in devices


@pytest.mark.parametrize(("mate", "device"), [
    ("usb", "qemu-xhci"),
    ("disk", "virtio-blk-pci,drive=root,bootindex=1"),
    ("nic", "virtio-net-pci,netdev=mgmt"),
])
def test_a_group_mate_shares_the_first_gpus_bridge(mate, device):
    devices = _devices(_argv(group_mate=mate, gpus=2))
    # Behind one PCIe-to-PCI bridge: one requester id, so one IOMMU group.
    assert "pcie-pci-bridge,id=gpu0-pci,bus=gpu0" in devices
    assert f"{device},bus=gpu0-pci,addr=02.0" in devices
    assert "VGA,bus=gpu0-pci,addr=01.0,multifunction=on" in devices
    assert "ich9-intel-hda,bus=gpu0-pci,addr=01.1" in devices
    assert sum(d.startswith(device.split(",")[0]) for d in devices) == 1  # moved, not added
    assert "VGA,bus=gpu1,addr=00.0,multifunction=on" in devices  # the second GPU is alone


def test_unknown_group_mate_is_refused():
    with pytest.raises(UsageError, match="unknown group mate 'gpu'"):
        HostSpec(name="a", group_mate="gpu")


def test_uefi_q35_and_ssh_only_on_loopback():
    argv = _argv()
    joined = " ".join(argv)
    assert argv[argv.index("-machine") + 1] == "q35"
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd" in joined
    assert "file=/lab/hosts/a/OVMF_VARS.fd" in joined
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in joined
    assert "name=opt/gpuprov/hostname,string=a" in joined
    assert "path=/lab/hosts/a/console.log,append=on" in joined


def test_disk_layout_is_aligned_and_leaves_room_for_the_backup_gpt():
    layout = disk_layout(8 * GIB, 256 * MIB)
    assert (layout.esp_start, layout.esp_size) == (MIB, 256 * MIB)
    assert layout.root_start == 257 * MIB
    assert layout.root_start % MIB == 0 and layout.root_size % MIB == 0
    assert layout.root_start + layout.root_size <= 8 * GIB - 33 * 512
    args = layout.sgdisk_args()
    assert args[args.index("--new") + 1] == "1:2048:526335"
    assert "1:ef00" in args and "2:8304" in args


def test_disk_layout_refuses_a_disk_too_small_for_a_root():
    with pytest.raises(ValueError):
        disk_layout(512 * MIB)


def test_recipe_hash_is_stable_and_sensitive():
    assert recipe_hash({"a": 1, "b": [1, 2]}) == recipe_hash({"b": [1, 2], "a": 1})
    assert recipe_hash({"a": 1}) != recipe_hash({"a": 2})


def test_inventory_names_every_host_with_its_own_port_and_pinned_host_key():
    pairs = [
        (HostSpec(name="b", ssh_port=2223, iommu="amd"), HostFiles(Path("/lab/hosts/b"))),
        (HostSpec(name="a", ssh_port=2222), HostFiles(Path("/lab/hosts/a"))),
    ]
    hosts = inventory(pairs, Path("/lab/id_ed25519"))["all"]["children"]["lab"]["hosts"]
    assert list(hosts) == ["a", "b"]
    assert hosts["b"]["ansible_port"] == 2223
    assert hosts["b"]["gpuprov_lab_iommu"] == "amd"
    assert hosts["a"]["ansible_ssh_private_key_file"] == "/lab/id_ed25519"
    assert "UserKnownHostsFile=/lab/hosts/a/known_hosts" in hosts["a"]["ansible_ssh_common_args"]


# An excerpt (escape codes of the GRUB menu removed) of a lab host's console from a CI run where
# four hosts booted at once under software emulation.
TIMER_PANIC = (Path(__file__).parent / "fixtures/lab/console-timer-panic.log").read_text()


def test_a_kernel_panic_is_a_boot_failure_worth_no_more_waiting():
    assert boot_failure(TIMER_PANIC) == (
        "the kernel panicked (timer doesn't work through Interrupt-remapped IO-APIC)")


def test_only_the_latest_boot_counts():
    rebooted = (TIMER_PANIC
                + "===== gpuprov lab: starting rf-nic at Mon Nov 23 15:00:00 2026 =====\n"
                + "[    1.234567] Run /init as init process\n")
    assert boot_failure(rebooted) is None
    assert boot_failure("") is None


def test_every_reboot_ends_qemu_and_the_supervisor_has_its_own_control_socket():
    argv = _argv()
    assert "-no-reboot" in argv and "-daemonize" not in argv
    sockets = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-qmp"]
    assert sockets == ["unix:/lab/hosts/a/qmp.sock,server=on,wait=off",
                       "unix:/lab/hosts/a/supervisor.sock,server=on,wait=off"]


def test_a_power_on_that_prints_nothing_is_stuck_only_after_the_bound():
    assert stalled_boot("", elapsed=179, timeout=180) is None
    assert stalled_boot("", elapsed=181, timeout=180) == \
        "the firmware printed nothing for 181 s after power-on"
    # OVMF's first output is a screen clear: escape codes are progress too.
    assert stalled_boot("\x1b[2J\x1b[01;01H", elapsed=900, timeout=180) is None
    assert stalled_boot("\n\n", elapsed=900, timeout=180) is not None


MACHINE = {"image": "bookworm-grub-0123.raw", "qemu_version": "QEMU emulator version 7.2.22",
           "firmware": "abcd"}


def test_a_machine_key_ignores_what_a_restored_host_changes_anyway():
    base = machine_key(HostSpec(name="a", ssh_port=2222), **MACHINE)
    assert machine_key(HostSpec(name="other-name", ssh_port=2299), **MACHINE) == base


@pytest.mark.parametrize("change", [
    {"iommu": "none"}, {"boot": "systemd-boot"}, {"gpus": 2}, {"group_mate": "usb"},
    {"memory_mib": 2048}, {"cpus": 1}])
def test_a_machine_key_covers_the_whole_shape(change):
    assert machine_key(HostSpec(name="a", **change), **MACHINE) != \
        machine_key(HostSpec(name="a"), **MACHINE)


@pytest.mark.parametrize("field", ["image", "qemu_version", "firmware"])
def test_a_machine_key_covers_image_qemu_and_firmware(field):
    assert machine_key(HostSpec(name="a"), **{**MACHINE, field: "changed"}) != \
        machine_key(HostSpec(name="a"), **MACHINE)


def test_a_stage_key_changes_with_any_input_and_the_machine():
    inputs = {"files": {"roles/vfio/tasks/main.yml": "aaaa"}, "request": {"gpus": []}}
    key = stage_key("m1", "host-setup", inputs)
    assert stage_key("m1", "host-setup", inputs) == key
    assert stage_key("m2", "host-setup", inputs) != key
    assert stage_key("m1", "guest-setup", inputs) != key
    assert stage_key("m1", "host-setup", {**inputs, "files": {
        "roles/vfio/tasks/main.yml": "bbbb"}}) != key
    assert stage_key("m1", "host-setup", {**inputs, "request": {"gpus": ["01:00"]}}) != key


def test_amd_hosts_cannot_be_checkpointed_and_say_why():
    assert "AMD IOMMU" in checkpoint_blocker(HostSpec(name="a", iommu="amd"))
    assert checkpoint_blocker(HostSpec(name="a", iommu="intel")) is None
    assert checkpoint_blocker(HostSpec(name="a", iommu="none")) is None
