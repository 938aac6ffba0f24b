"""libvirt planning: the new domain's XML, converting an existing domain, reading XML back."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gpuprov.errors import UsageError
from gpuprov.plan import libvirt as plan

CARD = ("0000:26:00.0", "0000:26:00.1")

# `virsh dumpxml --inactive` of a q35 domain as virt-install 4.1 (Debian 12) defines it with
# --boot uefi left out: BIOS firmware, a balloon, its own root ports (trimmed to what matters).
Q35_BIOS = """<domain type='kvm'>
  <name>legacy</name>
  <uuid>4b1d8c1e-58f6-4f7e-9a57-0c2a4f0c1e11</uuid>
  <memory unit='KiB'>4194304</memory>
  <currentMemory unit='KiB'>4194304</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/legacy.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='pci' index='0' model='pcie-root'/>
    <controller type='pci' index='1' model='pcie-root-port'/>
    <controller type='pci' index='2' model='pcie-root-port'/>
    <controller type='pci' index='3' model='pcie-root-port'/>
    <memballoon model='virtio'/>
  </devices>
</domain>
"""

I440FX = Q35_BIOS.replace("pc-q35-7.2", "pc-i440fx-7.2").replace("legacy", "old")

# A running passthrough domain's live XML, as libvirt 9.0 reports it after firmware
# autoselection (the loader and its secure attribute filled in).
LIVE_EFI = """<domain type='qemu' id='1'>
  <name>gpu-26-00</name>
  <memory unit='KiB'>262144</memory>
  <memoryBacking><locked/></memoryBacking>
  <vcpu placement='static'>1</vcpu>
  <os firmware='efi'>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <firmware>
      <feature enabled='no' name='enrolled-keys'/>
      <feature enabled='no' name='secure-boot'/>
    </firmware>
    <loader readonly='yes' secure='no' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'
      >/var/lib/libvirt/qemu/nvram/gpu-26-00_VARS.fd</nvram>
  </os>
  <devices>
    <hostdev mode='subsystem' type='pci' managed='no'>
      <driver name='vfio'/>
      <source><address domain='0x0000' bus='0x26' slot='0x00' function='0x0'/></source>
      <alias name='hostdev0'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0' multifunction='on'/>
    </hostdev>
    <hostdev mode='subsystem' type='pci' managed='no'>
      <driver name='vfio'/>
      <source><address domain='0x0000' bus='0x26' slot='0x00' function='0x1'/></source>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x1'/>
    </hostdev>
    <serial type='pty'>
      <source path='/dev/pts/1'/>
      <log file='/var/log/libvirt/qemu/gpu-26-00-console.log' append='off'/>
    </serial>
  </devices>
</domain>
"""


def _new(**overrides) -> plan.NewDomain:
    fields = {"name": "gpu-26-00", "domain_type": "kvm", "memory_mib": 16384, "cores": 8,
              "functions": CARD, "console_log": "/var/log/libvirt/qemu/gpu-26-00-console.log",
              "disk": "/var/lib/libvirt/images/gpu-26-00.qcow2", "network": "default"}
    return plan.NewDomain(**{**fields, **overrides})


def test_a_new_domain_is_q35_uefi_without_secure_boot_with_locked_memory():
    root = ET.fromstring(plan.new_domain_xml(_new()))
    assert root.get("type") == "kvm" and root.findtext("name") == "gpu-26-00"
    assert root.find("os/type").get("machine") == "q35"
    assert root.find("os").get("firmware") == "efi"
    features = {f.get("name"): f.get("enabled") for f in root.findall("os/firmware/feature")}
    assert features == {"secure-boot": "no", "enrolled-keys": "no"}
    assert root.find("memoryBacking/locked") is not None
    assert root.find("memory").text == "16384" and root.find("memory").get("unit") == "MiB"
    assert root.findtext("vcpu") == "8"
    assert root.find("cpu").get("mode") == "host-passthrough"
    assert root.find("devices/memballoon").get("model") == "none"
    assert root.find("devices/video/model").get("type") == "none"
    assert root.find("devices/interface/source").get("network") == "default"
    assert root.find("devices/disk/source").get("file").endswith("gpu-26-00.qcow2")
    assert root.find("devices/serial/log").get("file").endswith("gpu-26-00-console.log")


def test_the_card_keeps_its_shape_on_one_root_port():
    root = ET.fromstring(plan.new_domain_xml(_new()))
    (port,) = root.findall("devices/controller[@model='pcie-root-port']")
    hostdevs = root.findall("devices/hostdev")
    assert [h.get("managed") for h in hostdevs] == ["no", "no"]
    assert plan.hostdev_sources(root) == list(CARD)
    guest = [h.find("address").attrib for h in hostdevs]
    assert {g["bus"] for g in guest} == {f"0x{int(port.get('index')):02x}"}
    assert [g["function"] for g in guest] == ["0x0", "0x1"]
    assert guest[0]["multifunction"] == "on" and "multifunction" not in guest[1]


def test_software_emulation_direct_kernel_boot_iso_and_hidden_hypervisor():
    tcg = ET.fromstring(plan.new_domain_xml(_new(
        domain_type="qemu", disk=None, network=None, kernel="/boot/vmlinuz-6.1.0-40-amd64",
        initrd="/var/tmp/guest.cpio.gz", cmdline="console=ttyS0 panic=-1")))
    assert tcg.get("type") == "qemu" and tcg.find("cpu").get("mode") == "maximum"
    assert tcg.findtext("os/kernel") == "/boot/vmlinuz-6.1.0-40-amd64"
    assert tcg.findtext("os/cmdline") == "console=ttyS0 panic=-1"
    assert tcg.find("os/boot") is None, "a boot order makes OVMF skip the kernel"
    assert tcg.find("devices/disk") is None and tcg.find("devices/interface") is None

    installer = ET.fromstring(plan.new_domain_xml(_new(iso="/srv/iso/debian-12.iso",
                                                       bridge="br0", network=None,
                                                       hide_hypervisor=True)))
    assert [b.get("dev") for b in installer.findall("os/boot")] == ["cdrom", "hd"]
    assert installer.find("devices/disk[@device='cdrom']/source").get("file") == \
        "/srv/iso/debian-12.iso"
    assert installer.find("devices/interface/source").get("bridge") == "br0"
    assert installer.find("features/kvm/hidden").get("state") == "on"


def test_one_function_alone_is_not_multifunction():
    root = ET.fromstring(plan.new_domain_xml(_new(functions=CARD[:1])))
    assert "multifunction" not in root.find("devices/hostdev/address").attrib


def test_names():
    assert plan.default_name(CARD) == "gpu-26-00"
    assert plan.check_name("ml-box.1") == "ml-box.1"
    for bad in ("-x", "a b", "a/b", "x" * 64, ""):
        with pytest.raises(UsageError, match="not a usable libvirt domain name"):
            plan.check_name(bad)


def test_card_users_and_check_free():
    users = plan.card_users(CARD, {"gpu-26-00": LIVE_EFI, "legacy": Q35_BIOS})
    assert users == {"0000:26:00.0": "gpu-26-00", "0000:26:00.1": "gpu-26-00"}
    with pytest.raises(plan.LibvirtRefused, match=r"another VM: 0000:26:00.0 \(domain gpu-26-00"):
        plan.check_free(users, None)
    with pytest.raises(plan.LibvirtRefused, match="domain gpu-26-00 already has"):
        plan.check_free(users, "gpu-26-00")
    plan.check_free({}, "legacy")


def test_attach_converts_bios_to_uefi_and_locks_memory_on_a_new_root_port():
    after, conversions = plan.attach_xml(Q35_BIOS, CARD)
    assert [c.split(":")[0] for c in conversions] == ["firmware", "memory"]
    root = ET.fromstring(after)
    assert root.find("os").get("firmware") == "efi"
    assert root.find("os/firmware/feature[@name='secure-boot']").get("enabled") == "no"
    assert root.find("memoryBacking/locked") is not None
    ports = [int(c.get("index")) for c in root.findall("devices/controller[@type='pci']")]
    assert ports == [0, 1, 2, 3, 4]
    assert {h.find("address").get("bus") for h in root.findall("devices/hostdev")} == {"0x04"}
    assert root.find("devices/disk/source").get("file") == "/var/lib/libvirt/images/legacy.qcow2"


def test_attach_to_a_ready_domain_needs_no_conversion():
    ready = LIVE_EFI.replace("<hostdev", "<!-- <hostdev").replace("</hostdev>", "</hostdev> -->")
    _after, conversions = plan.attach_xml(ready, ("0000:2d:00.0",))
    assert conversions == []


def test_attach_refuses_i440fx_and_a_hand_picked_secure_boot_loader():
    with pytest.raises(plan.LibvirtRefused, match=r"machine type pc-i440fx-7\.2, not q35"):
        plan.attach_xml(I440FX, CARD)
    secure = LIVE_EFI.replace("secure='no'", "secure='yes'")
    with pytest.raises(plan.LibvirtRefused, match="secure-boot firmware"):
        plan.attach_xml(secure, ("0000:2d:00.0",))
    autoselect_secure = Q35_BIOS.replace("<os>", "<os firmware='efi'>")
    _after, conversions = plan.attach_xml(autoselect_secure, CARD)
    assert conversions[0].startswith("secure boot: off")


def test_domain_settings_read_what_libvirt_reports():
    settings = plan.domain_settings(LIVE_EFI)
    assert settings == {
        "type": "qemu", "machine": "pc-q35-7.2", "firmware": "efi", "secure_boot": "off",
        "memory_locked": "yes", "memory_mib": "256", "vcpus": "1",
        "hostdevs": "0000:26:00.0,0000:26:00.1",
        "loader": "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "console_log": "/var/log/libvirt/qemu/gpu-26-00-console.log",
    }
    legacy = plan.domain_settings(Q35_BIOS)
    assert legacy["firmware"] == "bios" and legacy["secure_boot"] == "off"
    assert legacy["memory_locked"] == "no" and legacy["memory_mib"] == "4096"


# /proc/meminfo captured on real machines: this project's 24 GiB CI machine, and a lab host
# with 2 GiB (the libvirt chain's), on which a 64G VM was refused by hand.
MEMINFO = {path.name: path.read_text()
           for path in sorted((Path(__file__).parent / "fixtures/meminfo").iterdir())}


@pytest.mark.parametrize("capture", MEMINFO)
def test_meminfo_is_read_in_mib(capture):
    fields = plan.meminfo_mib(MEMINFO[capture])
    assert fields["MemTotal"] > fields["MemAvailable"] > 0
    assert fields["MemTotal"] == int(MEMINFO[capture].split()[1]) // 1024
    assert "HugePages_Total" in fields  # a count, not kB: read as given


@pytest.mark.parametrize("capture", MEMINFO)
def test_a_domain_that_fits_in_locked_memory_passes(capture):
    available = plan.meminfo_mib(MEMINFO[capture])["MemAvailable"]
    plan.check_memory(MEMINFO[capture], available - plan.QEMU_OVERHEAD_MIB, host="kvm1",
                      domain="gpu")


@pytest.mark.parametrize("capture", MEMINFO)
def test_a_domain_that_cannot_be_locked_is_refused_with_both_numbers(capture):
    fields = plan.meminfo_mib(MEMINFO[capture])
    with pytest.raises(plan.LibvirtRefused) as refused:
        plan.check_memory(MEMINFO[capture], fields["MemAvailable"], host="kvm1", domain="gpu")
    said = f"{refused.value.message} {refused.value.hint}"
    assert f"kvm1 has {fields['MemAvailable']} MiB of memory available" in said
    assert f"domain gpu needs {fields['MemAvailable']} MiB locked in RAM" in said
    assert f"give --memory {fields['MemAvailable'] - plan.QEMU_OVERHEAD_MIB}M or less" in said
    assert refused.value.exit_code == 20
