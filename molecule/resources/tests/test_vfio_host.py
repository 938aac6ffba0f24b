"""testinfra: after host_setup.yml and its one reboot, the kernel state is what we promised.

Shared by the host-setup scenarios; each scenario's host vars say what to expect.
"""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def expect(host):
    return host.ansible.get_variables()


def _sysfs_link(host, address: str, link: str) -> str:
    target = host.file(f"/sys/bus/pci/devices/{address}/{link}")
    return target.linked_to.rsplit("/", 1)[-1] if target.exists else ""


def test_every_function_is_on_vfio_pci_with_its_group_device(host, expect):
    for address in expect["vfio_pci_addresses"]:
        assert _sysfs_link(host, address, "driver") == "vfio-pci", address
        group = _sysfs_link(host, address, "iommu_group")
        assert group.isdigit(), address
        assert host.run(f"test -c /dev/vfio/{group}").rc == 0, f"/dev/vfio/{group}"


def test_running_kernel_command_line(host, expect):
    cmdline = host.file("/proc/cmdline").content_string.split()
    assert ("iommu=pt" in cmdline) == bool(expect.get("iommu_passthrough_mode"))
    # Never the invalid switch, on any CPU, and no off switch: prepare.yml configured one.
    assert not any(p.startswith("amd_iommu") for p in cmdline)
    assert expect["iommu_off_param"] not in cmdline
    assert not any(p.split("=")[0] in ("iommu", "intel_iommu") and "off" in p for p in cmdline)
    kernel_turns_intel_on = host.run(
        "grep -qE '^CONFIG_INTEL_IOMMU_DEFAULT_ON(_INTGPU_OFF)?=y' /boot/config-$(uname -r)"
    ).rc == 0
    is_intel = "GenuineIntel" in host.file("/proc/cpuinfo").content_string
    # intel_iommu=off is replaced by intel_iommu=on, even where the kernel turns it on itself.
    replaced_off = expect["iommu_off_param"].startswith("intel_iommu=")
    assert ("intel_iommu=on" in cmdline) == (is_intel and (replaced_off
                                                           or not kernel_turns_intel_on))


def test_iommu_active(host):
    assert host.run("ls /sys/kernel/iommu_groups").stdout.split()


def test_boot_loader_carries_the_parameters(host, expect):
    if expect["expected_bootloader"] == "grub":
        assert host.file("/etc/default/grub.d/gpuprov-iommu.cfg").contains("iommu=pt")
        assert host.file("/boot/grub/grub.cfg").contains("iommu=pt")
    else:
        assert host.file("/etc/kernel/cmdline").contains("iommu=pt")
        assert host.file("/var/backups/gpuprov/etc/kernel/cmdline").exists
        assert host.run("grep -l iommu=pt /boot/efi/loader/entries/*.conf").rc == 0


def test_drivers_ordered_not_blacklisted(host):
    conf = host.file("/etc/modprobe.d/gpuprov-vfio.conf")
    assert conf.contains("softdep bochs pre: vfio-pci")
    assert conf.contains("softdep snd_hda_intel pre: vfio-pci")
    assert host.run("grep -rl '^blacklist' /etc/modprobe.d/").stdout.strip() == ""
    assert host.file("/var/backups/gpuprov/etc/initramfs-tools/modules").exists


def test_rollback_records_name_every_change_and_its_original(host, expect):
    # What playbooks/host_rollback.yml will undo: each record names files that exist now.
    records = {}
    for role in ("iommu", "vfio"):
        record = host.file(f"/var/lib/gpuprov/rollback/{role}.json")
        assert record.exists and record.mode == 0o600, role
        records[role] = json.loads(record.content_string)
    for record in records.values():
        for edited in record["restore"]:
            assert host.file(edited["path"]).exists and host.file(edited["from"]).exists
        for added in record["remove"]:
            assert host.file(added).exists, added
    vfio_added = set(records["vfio"]["remove"])
    assert "/etc/modprobe.d/gpuprov-vfio.conf" in vfio_added
    assert ("/etc/initramfs-tools/scripts/init-top/gpuprov-vfio-override" in vfio_added) == (
        expect["vfio_bind_mode"] == "address")
    if expect["expected_bootloader"] == "grub":
        assert records["iommu"]["remove"] == ["/etc/default/grub.d/gpuprov-iommu.cfg"]
    else:
        assert [e["path"] for e in records["iommu"]["restore"]] == ["/etc/kernel/cmdline"]
