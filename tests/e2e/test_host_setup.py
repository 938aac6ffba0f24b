"""`gpuprov host setup` and `host rollback` end to end on real lab hosts (Debian's kernel under
QEMU with a virtual IOMMU), and every refusal on a lab host built to trigger it."""

from __future__ import annotations

import json
import subprocess

import pytest

pytestmark = pytest.mark.vm

GPU = ("0000:01:00.0", "0000:01:00.1")
ADDED_FILES = "/etc/modprobe.d/gpuprov-vfio.conf /var/backups/gpuprov"
BACKUPS = "/var/backups/gpuprov-elsewhere"  # both roles' backups, moved by host_vars


def _ssh(run_gpuprov, name: str, command: str) -> str:
    return run_gpuprov("lab", "ssh", name, "--", command).stdout.strip()


def _drivers(run_gpuprov, name: str, addresses=GPU) -> list[str]:
    return _ssh(run_gpuprov, name, " ; ".join(
        f"basename $(readlink /sys/bus/pci/devices/{a}/driver)" for a in addresses)).split()


def _boot_id(run_gpuprov, name: str) -> str:
    return _ssh(run_gpuprov, name, "cat /proc/sys/kernel/random/boot_id")


def _untouched(run_gpuprov, name: str) -> bool:
    return _ssh(run_gpuprov, name, f"ls -d {ADDED_FILES} 2>/dev/null | wc -l") == "0"


def _inventory_with_own_backup_dirs(lab_root, tmp_path):
    """The lab's inventory as an inventory directory whose host_vars move both roles' backups
    away from the default: rollback must find them from the roles' records alone."""
    inventory = tmp_path / "inventory"
    (inventory / "host_vars").mkdir(parents=True)
    (inventory / "lab.yml").symlink_to(lab_root / "inventory.yml")
    (inventory / "host_vars" / "hs.yml").write_text(
        f"iommu_backup_dir: {BACKUPS}/iommu\nvfio_backup_dir: {BACKUPS}/vfio\n")
    return str(inventory)


def test_setup_once_then_nothing_to_do_then_rollback(run_gpuprov, lab_root, tmp_path):
    run_gpuprov("lab", "up", "hs")
    inventory = _inventory_with_own_backup_dirs(lab_root, tmp_path)
    try:
        # The IOMMU switched off in an administrator's GRUB settings, as a host may come:
        # inspect plans to remove it, and setup must keep that promise.
        _ssh(run_gpuprov, "hs", "echo 'GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX intel_iommu=off\"'"
             " > /etc/default/grub.d/50-admin.cfg && update-grub 2>/dev/null")
        planned = json.loads(run_gpuprov("host", "inspect", "hs", "--json", check=False).stdout)
        assert planned["kernel_params"]["remove"] == ["intel_iommu=off"]
        booted = _boot_id(run_gpuprov, "hs")

        # Without a terminal and without --yes, the boot-VGA card is refused, unchanged.
        refused = run_gpuprov("host", "setup", "hs", check=False)
        assert refused.returncode == 20, refused.stderr
        assert "0000:01:00.0 is the boot VGA device" in refused.stderr
        assert "--yes" in refused.stderr

        done = run_gpuprov("host", "setup", "hs", "--gpu", "01:00", "--yes", "-i", inventory)
        # The plan names every function; confirmed in advance, the run shows the files' diffs.
        assert "0000:01:00.1" in done.stdout and "vfio-pci" in done.stdout
        assert "changed:" in done.stdout
        assert "+ options vfio-pci ids=1234:1111,8086:293e disable_vga=1" in done.stdout
        assert "+ softdep bochs pre: vfio-pci" in done.stdout
        assert "ready: hs: every function on vfio-pci" in done.stdout
        assert "one reboot" in done.stdout
        rebooted = _boot_id(run_gpuprov, "hs")
        assert rebooted != booted
        assert "intel_iommu=off" not in _ssh(run_gpuprov, "hs", "cat /proc/cmdline").split()
        assert _ssh(run_gpuprov, "hs", f"test -f {BACKUPS}/vfio/etc/initramfs-tools/modules "
                    "&& test ! -e /var/backups/gpuprov && echo elsewhere") == "elsewhere"

        # Proof from the host itself, not from our own report.
        assert _drivers(run_gpuprov, "hs") == ["vfio-pci", "vfio-pci"]
        inspect = run_gpuprov("host", "inspect", "hs", "--json", check=False)
        assert inspect.returncode == 0, inspect.stdout + inspect.stderr
        [gpu] = json.loads(inspect.stdout)["gpus"]
        assert gpu["verdict"] == "ready"
        group = gpu["iommu_groups"][0]
        assert _ssh(run_gpuprov, "hs", f"test -c /dev/vfio/{group} && echo yes") == "yes"

        # A second run changes nothing and does not reboot.
        again = run_gpuprov("host", "setup", "hs", "--yes", "-i", inventory)
        assert "nothing to do: hs is ready and its configuration matches" in again.stdout
        assert _boot_id(run_gpuprov, "hs") == rebooted

        # The lab's own inventory, which does not know where the backups went: the records do.
        undone = run_gpuprov("host", "rollback", "hs", "--yes")
        assert "will change:" in undone.stdout
        assert _drivers(run_gpuprov, "hs") == ["bochs-drm", "snd_hda_intel"]
        assert _ssh(run_gpuprov, "hs", "ls /etc/modprobe.d/gpuprov-vfio.conf 2>&1 || true") \
            .endswith("No such file or directory")
        assert run_gpuprov("host", "inspect", "hs", check=False).returncode == 10
        # Every record was undone and forgotten.
        assert _ssh(run_gpuprov, "hs", "ls -A /var/lib/gpuprov/rollback") == ""
        assert "nothing to do" in run_gpuprov("host", "rollback", "hs", "--yes").stdout
    finally:
        run_gpuprov("lab", "destroy", "hs")


def _up_together(run_gpuprov, hosts: dict[str, list[str]]) -> None:
    """Boot differently built hosts at once (one `lab up` each; the lab serialises its state)."""
    processes = {name: subprocess.Popen(
        [*run_gpuprov.argv, "lab", "up", name, *options], env=run_gpuprov.env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, options in hosts.items()}
    # Wait for every one before judging any, so none is still booting when the test fails.
    outputs = {name: process.communicate(timeout=1800)[0] for name, process in processes.items()}
    for name, process in processes.items():
        assert process.returncode == 0, f"lab up {name}:\n{outputs[name]}"


REFUSAL_HOSTS = {
    "rf-usb": ["--group-mate", "usb"],
    "rf-disk": ["--group-mate", "disk"],
    "rf-nic": ["--group-mate", "nic"],
    "rf-none": ["--iommu", "none"],
}


def test_every_refusal_on_a_host_built_to_trigger_it(run_gpuprov):
    _up_together(run_gpuprov, REFUSAL_HOSTS)
    try:
        expected = {
            "rf-usb": ("shares IOMMU group", "QEMU XHCI Host Controller",
                       "--accept-shared-group"),
            "rf-disk": ("holds the root disk's controller", "Virtio block device",
                        "root disk on a controller outside this group"),
            "rf-nic": ("holds the management NIC", "Virtio network device",
                       "through a NIC outside this group"),
            "rf-none": ("the firmware exposes no IOMMU (no ACPI DMAR table)", "",
                        "enable VT-d"),
        }
        for name, (reason, device, fix) in expected.items():
            # --yes accepts the console warning only; none of these is overridable by it.
            result = run_gpuprov("host", "setup", name, "--yes", check=False)
            assert result.returncode == 20, (name, result.stdout, result.stderr)
            assert f"not setting up {name}, nothing was changed" in result.stderr
            assert reason in result.stderr and device in result.stderr, result.stderr
            assert fix in result.stderr, result.stderr
            assert _untouched(run_gpuprov, name)

        # Even accepted, a shared group never takes the root disk or the management NIC.
        for name in ("rf-disk", "rf-nic"):
            result = run_gpuprov("host", "setup", name, "--yes", "--accept-shared-group",
                                 check=False)
            assert result.returncode == 20, (name, result.stderr)

        # Accepted, the unrelated device goes along; --check shows it and changes nothing.
        checked = run_gpuprov("host", "setup", "rf-usb", "--accept-shared-group", "--check")
        assert "0000:02:02.0" in checked.stdout and "would change:" in checked.stdout
        assert "driver_override" in checked.stdout
        assert "--check: nothing was changed" in checked.stdout
        assert _untouched(run_gpuprov, "rf-usb")

        # Addresses: not there, not a GPU, not an address at all.
        absent = run_gpuprov("host", "setup", "rf-none", "--gpu", "26:00", check=False)
        assert absent.returncode == 3 and "no PCI device 0000:26:00 on rf-none" in absent.stderr
        not_gpu = run_gpuprov("host", "setup", "rf-usb", "--gpu", "02:02.0", check=False)
        assert not_gpu.returncode == 2 and "is not a GPU" in not_gpu.stderr
        typo = run_gpuprov("host", "setup", "rf-usb", "--gpu", "02:0g.0", check=False)
        assert typo.returncode == 2 and "is not a PCI address" in typo.stderr

        # A host that does not answer.
        run_gpuprov("lab", "down", "rf-none")
        gone = run_gpuprov("host", "setup", "rf-none", "--yes", check=False)
        assert gone.returncode == 4 and "cannot reach rf-none over SSH" in gone.stderr
    finally:
        run_gpuprov("lab", "destroy", *REFUSAL_HOSTS)
