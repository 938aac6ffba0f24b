"""testinfra: after host_setup.yml and its one reboot, the kernel state is what we promised.

Shared by the host-setup scenarios; each scenario's host vars say what to expect.
"""

from __future__ import annotations

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
    # Never the invalid switch, on any CPU.
    assert not any(p.startswith("amd_iommu") for p in cmdline)
    kernel_turns_intel_on = host.run(
        "grep -qE '^CONFIG_INTEL_IOMMU_DEFAULT_ON(_INTGPU_OFF)?=y' /boot/config-$(uname -r)"
    ).rc == 0
    is_intel = "GenuineIntel" in host.file("/proc/cpuinfo").content_string
    assert ("intel_iommu=on" in cmdline) == (is_intel and not kernel_turns_intel_on)


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
