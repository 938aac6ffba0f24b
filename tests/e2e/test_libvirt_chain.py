"""Issue #6's proof, end to end on a real kernel: a stock lab host is prepared by `host setup`,
`vm passthrough --hypervisor libvirt` installs libvirt there and defines and starts a q35/OVMF
domain with the vfio-bound stand-in GPU, and the nested guest booted from that domain lists
both of the card's functions on its own serial console. The assertions are on the guest's
output and on libvirt's read-back, never on what gpuprov meant to configure."""

from __future__ import annotations

import pytest

from tests.e2e.libvirt_chain import DOMAIN, gpuprov, run_chain

pytestmark = pytest.mark.vm

STAND_IN_GPU = {"1234:1111": "030000", "8086:293e": "040300"}  # VGA, HD audio


def test_the_nested_guest_sees_both_functions_of_the_card(lab_root, run_gpuprov):
    try:
        run = run_chain(lab_root, "lv")
        # What the guest enumerated: both functions, with their classes, in one slot.
        seen = {device_id: (address, device_class)
                for address, device_id, device_class in run.devices}
        assert set(STAND_IN_GPU) <= set(seen), run.console[-3000:]
        for device_id, device_class in STAND_IN_GPU.items():
            assert seen[device_id][1] == device_class
        # The domain has no emulated VGA (which would also be 1234:1111): this is the card.
        assert [i for _, i, _ in run.devices].count("1234:1111") == 1, run.devices
        slots = {seen[device_id][0].rsplit(".", 1)[0] for device_id in STAND_IN_GPU}
        assert len(slots) == 1, f"the card's functions were split across slots: {seen}"

        # What libvirt says the domain is, read back by gpuprov from `virsh dumpxml`.
        report = run.passthrough
        assert report["created"] and report["vm_name"] == DOMAIN
        settings = report["settings"]
        assert settings["machine"].startswith("pc-q35") or settings["machine"] == "q35"
        assert settings["firmware"] == "efi" and settings["secure_boot"] == "off"
        assert "OVMF" in settings.get("loader", ""), settings
        assert settings["memory_locked"] == "yes"
        assert settings["hostdevs"] == "0000:01:00.0,0000:01:00.1"

        # libvirt's own view: the domain exists and has the card, unmanaged.
        xml = gpuprov(lab_root, "lab", "ssh", "lv", "--",
                      f"virsh -c qemu:///system dumpxml {DOMAIN}")
        assert xml.count("<hostdev mode='subsystem' type='pci' managed='no'>") == 2

        # A second VM cannot have the same card; nothing is defined for it.
        again = run_gpuprov("vm", "passthrough", "--hypervisor", "libvirt", "--host", "lv",
                            "--gpu", "01:00", "--name", "second", check=False)
        assert again.returncode == 20, again.stderr
        assert f"already given to another VM: 0000:01:00.0 (domain {DOMAIN})" in \
            " ".join(again.stderr.split())
        names = gpuprov(lab_root, "lab", "ssh", "lv", "--", "virsh -c qemu:///system list "
                        "--all --name").split()
        assert names == [DOMAIN]

        # With the card free again, a VM bigger than the host's available memory is refused
        # before anything is defined (QEMU could not lock its RAM, and would fail at start).
        gpuprov(lab_root, "lab", "ssh", "lv", "--", f"virsh -c qemu:///system destroy {DOMAIN};"
                f" virsh -c qemu:///system undefine --nvram {DOMAIN}")
        big = run_gpuprov("vm", "passthrough", "--hypervisor", "libvirt", "--host", "lv",
                          "--gpu", "01:00", "--name", "big", "--memory", "64G", check=False)
        said = " ".join(big.stderr.split())
        assert big.returncode == 20, big.stderr
        assert "MiB of memory available" in said and "needs 65536 MiB locked in RAM" in said
        assert gpuprov(lab_root, "lab", "ssh", "lv", "--", "virsh -c qemu:///system list "
                       "--all --name").split() == []
        assert "big.qcow2" not in gpuprov(lab_root, "lab", "ssh", "lv", "--",
                                          "virsh -c qemu:///system vol-list default")
    finally:
        gpuprov(lab_root, "lab", "destroy", "lv")
