"""Host setup figures: `gpuprov host setup` wall time next to the unavoidable floor measured on
the same lab host in the same run, and the second (no-op) run.

    .venv/bin/python bench/host_setup.py [--boot grub|systemd-boot]

The floor is what any tool must spend: regenerating the boot configuration (update-grub, or
systemd-boot's entries), rebuilding the initramfs once, and one reboot back to SSH. Everything
above it is gpuprov's own cost (inspection, the check-mode preview, Ansible, verification).
The host boots in a private lab directory and is destroyed afterwards.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from private_lab import private_lab, quiet

from gpuprov.lab.hosts import Lab
from gpuprov.transport import ssh

GPUPROV = str(Path(sys.executable).with_name("gpuprov"))
REGENERATE = {
    "grub": "update-grub",
    "systemd-boot": 'for i in /boot/vmlinuz-*; do v=${i#/boot/vmlinuz-}; '
                    'kernel-install add "$v" "$i" "/boot/initrd.img-$v"; done',
}


def timed_gpuprov(lab_dir: Path, *args: str) -> float:
    started = time.monotonic()
    subprocess.run([GPUPROV, *args], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, env={**os.environ, "GPUPROV_LAB_DIR": str(lab_dir)})
    return time.monotonic() - started


def timed_ssh(lab: Lab, name: str, command: str) -> float:
    started = time.monotonic()
    with ssh.connect(lab.ssh_target(name)) as client:
        status, _out, err = ssh.run(client, command, timeout=1800)
    if status != 0:
        raise RuntimeError(f"{command!r} failed on {name}: {err}")
    return time.monotonic() - started


def timed_reboot(lab: Lab, name: str) -> float:
    """From the reboot command to SSH answering with a new boot id."""
    target = lab.ssh_target(name)
    with ssh.connect(target) as client:
        _status, boot_id, _err = ssh.run(client, "cat /proc/sys/kernel/random/boot_id")
        started = time.monotonic()
        ssh.run(client, "systemctl reboot", timeout=30)
    while True:
        time.sleep(2)
        try:
            with ssh.connect(target) as client:
                _status, now, _err = ssh.run(client, "cat /proc/sys/kernel/random/boot_id")
        except (ssh.SshUnavailable, OSError):
            continue
        if now.strip() and now != boot_id:
            return time.monotonic() - started


def floor_parts(lab: Lab, name: str, boot: str) -> tuple[float, float, float]:
    """What any tool must spend on ``name``: boot configuration, initramfs, one reboot."""
    return (timed_ssh(lab, name, REGENERATE[boot]),
            timed_ssh(lab, name, "update-initramfs -u -k all"),
            timed_reboot(lab, name))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boot", choices=sorted(REGENERATE), default="grub")
    args = parser.parse_args()

    name = "bench-setup"
    with private_lab() as lab:
        lab.up([name], report=quiet, boot=args.boot)
        setup = timed_gpuprov(lab.root, "host", "setup", name, "--yes")
        second = timed_gpuprov(lab.root, "host", "setup", name, "--yes")
        regenerate, initramfs, reboot = floor_parts(lab, name, args.boot)
        floor = regenerate + initramfs + reboot
        print(f"lab host: {args.boot}, Intel IOMMU, software emulation (TCG)")
        print(f"host setup, first run:               {setup:7.1f} s")
        print(f"  floor on the same host:            {floor:7.1f} s"
              f"  (boot config {regenerate:.1f} + initramfs {initramfs:.1f} + reboot "
              f"{reboot:.1f})")
        print(f"  gpuprov's own cost above the floor: {setup - floor:7.1f} s"
              f"  ({setup / floor:.1f}x the floor)")
        print(f"host setup, second run (no change):  {second:7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
