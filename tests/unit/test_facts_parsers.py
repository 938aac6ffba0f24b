"""The small parsers: probe sections, the kernel command line, PCI addresses, lspci, GRUB."""

from __future__ import annotations

import pytest

from gpuprov.errors import UsageError
from gpuprov.facts.bootloader import grub_cmdline
from gpuprov.facts.cmdline import KernelCmdline
from gpuprov.facts.pci import (
    DeviceSelector,
    PciDevice,
    gpus_of,
    merge_devices,
    parse_address,
    parse_lspci,
    parse_pci_sysfs,
)
from gpuprov.facts.sections import split_sections

# --- sections -------------------------------------------------------------------------------


def test_sections_statuses_and_files():
    probe = split_sections(
        "noise before the first header\n"
        "### kernel\n6.1.0-50-amd64\n"
        "### lspci [no command]\n"
        "### proxmox_boot_tool [exit 2]\nE: /etc/kernel/proxmox-boot-uuids does not exist.\n"
        "### file /etc/default/grub\n### BEGIN a comment in the file\n### cmdline is not\n"
        "GRUB_CMDLINE_LINUX=\"\"\n"
        "### file /etc/kernel/cmdline [absent]\n"
    )
    assert probe.get("kernel").lines == ("6.1.0-50-amd64",)
    assert probe.get("lspci").status == "no command" and not probe.get("lspci").present
    pbt = probe.get("proxmox_boot_tool")
    assert pbt.present and pbt.exit_code == 2 and "does not exist" in pbt.text
    grub = probe.file("/etc/default/grub")
    # Lines that look like headers but are not exactly one stay the file's content.
    assert grub.lines == ("### BEGIN a comment in the file", "### cmdline is not",
                          'GRUB_CMDLINE_LINUX=""')
    assert not probe.file("/etc/kernel/cmdline").present
    assert not probe.get("never_printed").present
    assert "noise" not in str(probe.sections)


# --- kernel command line --------------------------------------------------------------------


def test_cmdline_key_values_flags_and_repeats():
    cmdline = KernelCmdline.parse(
        "BOOT_IMAGE=/boot/vmlinuz-6.1.0-50-amd64 root=UUID=04-20 ro quiet "
        "intel_iommu=on,igfx_off iommu=pt iommu=nopt console=tty0 console=ttyS0,115200")
    assert cmdline.get("root") == "UUID=04-20"
    assert "quiet" in cmdline and cmdline.values("quiet") == [None]
    assert cmdline.has("intel_iommu", "on") and cmdline.has("intel_iommu", "igfx_off")
    assert cmdline.values("console") == ["tty0", "ttyS0,115200"]
    assert cmdline.get("iommu") == "nopt"  # the last one wins
    assert "amd_iommu" not in cmdline


def test_cmdline_quoting_and_init_arguments():
    cmdline = KernelCmdline.parse(
        'root=/dev/sda1 dyndbg="file x.c +p" "acpi_osi=Windows 2020" quiet -- single --foo')
    assert cmdline.get("dyndbg") == "file x.c +p"
    assert cmdline.get("acpi_osi") == "Windows 2020"
    assert [p.key for p in cmdline.params] == ["root", "dyndbg", "acpi_osi", "quiet"]
    assert cmdline.init_args == ("single", "--foo")
    assert str(cmdline.params[1]) == 'dyndbg="file x.c +p"'


def test_empty_cmdline():
    assert KernelCmdline.parse("").params == ()


# --- PCI addresses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "slot", "function"),
    [
        ("26:00", "0000:26:00", None),
        ("26:00.0", "0000:26:00", 0),
        ("0000:26:00.1", "0000:26:00", 1),
        ("0000:26:00.0", "0000:26:00", 0),
        ("0000:2A:1F.7", "0000:2a:1f", 7),
        (" 1:0.0 ", "0000:01:00", 0),
        ("10000:e0:17.0", "10000:e0:17", 0),  # Intel VMD domains have five digits
    ],
)
def test_address_forms_users_type(typed, slot, function):
    assert parse_address(typed) == DeviceSelector(slot, function)


@pytest.mark.parametrize("garbage", ["", "gpu0", "26", "26:00.8", "26:20.0", "0000:26:00.0.1",
                                     "zz:00.0", "26-00.0", "0000:126:00.0", "26:00."])
def test_bad_addresses_are_refused_with_a_hint(garbage):
    with pytest.raises(UsageError) as refused:
        parse_address(garbage)
    assert "is not a PCI address" in refused.value.message
    assert "26:00" in refused.value.hint and "0000:26:00.0" in refused.value.hint


def test_selector_matches_a_slot_or_one_function():
    assert parse_address("26:00").matches("0000:26:00.1")
    assert parse_address("26:00.1").matches("0000:26:00.1")
    assert not parse_address("26:00.0").matches("0000:26:00.1")


# --- lspci and sysfs ------------------------------------------------------------------------

LSPCI = """\
0000:26:00.0 VGA compatible controller [0300]: NVIDIA Corporation GP108 [GeForce GT 1030] [10de:1d01] (rev a1)
\tSubsystem: Gigabyte Technology Co., Ltd Device [1458:3747]
\tKernel driver in use: nouveau
\tKernel modules: nvidiafb, nouveau
26:00.1 Audio device [0403]: NVIDIA Corporation GP108 High Definition Audio Controller [10de:0fb8] (rev a1)
\tKernel driver in use: vfio-pci
\tKernel modules: snd_hda_intel
0000:01:00.0 VGA compatible controller [0300]: Device [1234:1111] (rev 02)
a line lspci never prints
"""  # noqa: E501


def test_lspci_names_drivers_and_modules():
    gt1030, audio, standin = parse_lspci(LSPCI.splitlines())
    assert gt1030 == PciDevice(
        "0000:26:00.0", "0300", "10de:1d01",
        "VGA compatible controller: NVIDIA Corporation GP108 [GeForce GT 1030]",
        "nouveau", ("nvidiafb", "nouveau"))
    assert (audio.address, audio.driver, audio.modules) == (
        "0000:26:00.1", "vfio-pci", ("snd_hda_intel",))
    assert (standin.vendor_device, standin.driver, standin.description) == (
        "1234:1111", None, "VGA compatible controller: Device")


def test_sysfs_is_the_truth_and_lspci_adds_names():
    sysfs = parse_pci_sysfs([
        "0000:26:00.0 class=0x030000 vendor=0x10de device=0x1d01 driver=nouveau "
        "iommu_group=15 boot_vga=1",
        "0000:26:00.1 class=0x040300 vendor=0x10de device=0x0fb8",
        "0000:00:00.2 class=0x080600 vendor=0x1022 device=0x1451",
    ])
    merged = merge_devices(parse_lspci(LSPCI.splitlines()), sysfs, {"0000:26:00.1": 15})
    by_address = {d.address: d for d in merged}
    assert by_address["0000:26:00.0"].boot_vga is True
    assert by_address["0000:26:00.0"].modules == ("nvidiafb", "nouveau")
    # sysfs saw no driver on 26:00.1 (a later lspci line cannot override the kernel's view)
    assert by_address["0000:26:00.1"].driver is None
    assert by_address["0000:26:00.1"].iommu_group == 15  # from /sys/kernel/iommu_groups
    assert by_address["0000:00:00.2"].iommu_group is None
    [gpu] = gpus_of(merged)
    assert gpu.slot == "0000:26:00" and gpu.addresses == ("0000:26:00.0", "0000:26:00.1")


def test_without_sysfs_lspci_alone_is_used():
    merged = merge_devices(parse_lspci(LSPCI.splitlines()), [], {})
    assert [d.driver for d in merged] == [None, "nouveau", "vfio-pci"]


# --- GRUB -----------------------------------------------------------------------------------


def _files(*texts: str):
    probe = split_sections("".join(
        f"### file /etc/default/grub{'' if i == 0 else f'.d/{i}.cfg'}\n{t}\n"
        for i, t in enumerate(texts)))
    return [probe.file("/etc/default/grub"), *probe.files_under("/etc/default/grub.d")]


def test_grub_cmdline_reads_both_variables_quotes_and_comments():
    assert grub_cmdline(_files(
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
        '#GRUB_CMDLINE_LINUX_DEFAULT="commented out"\n'
        "GRUB_CMDLINE_LINUX='console=ttyS0,115200'  # serial\n")) == \
        "console=ttyS0,115200 quiet"


def test_grub_d_files_come_later_and_may_extend():
    # Proxmox VE on ZFS with GRUB: /etc/default/grub.d/zfs.cfg appends to the variable.
    assert grub_cmdline(_files(
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=""\n',
        'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX root=ZFS=rpool/ROOT/pve-1 boot=zfs"\n',
        'GRUB_CMDLINE_LINUX_DEFAULT="${GRUB_CMDLINE_LINUX_DEFAULT} intel_iommu=on"\n',
    )) == "root=ZFS=rpool/ROOT/pve-1 boot=zfs quiet intel_iommu=on"


def test_grub_cmdline_without_files_is_none():
    assert grub_cmdline([split_sections("### file /etc/default/grub [absent]\n")
                         .file("/etc/default/grub")]) is None
