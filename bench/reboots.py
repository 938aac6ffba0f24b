"""Reboot figures: a lab host rebooted N times (default 30) while a second host keeps a core
busy beside it; how many reboots hung, how each was recovered, and how long they took.

    .venv/bin/python bench/reboots.py [--count 30] [--timeout 600]

Every guest reboot is a power cycle (QEMU exits, the supervisor starts a fresh one); a power-on
that stalls in the firmware, or a kernel that panics, is recorded and power-cycled again. A
reboot "hung" if SSH did not answer with a new boot id within --timeout seconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from private_lab import private_lab, quiet

from gpuprov.lab.hosts import Lab
from gpuprov.lab.supervisor import LOG_FILE
from gpuprov.transport import ssh

BUSY = "nohup sh -c 'while :; do gzip -1 -c /usr/bin/python3 > /dev/null; done' >/dev/null 2>&1 &"


def _boot_id(target: ssh.SshTarget) -> str | None:
    try:
        with ssh.connect(target, timeout=10) as client:
            status, out, _err = ssh.run(client, "cat /proc/sys/kernel/random/boot_id", timeout=30)
    except (ssh.SshUnavailable, OSError):
        return None
    return out.strip() if status == 0 and out.strip() else None


def _reboot(lab: Lab, name: str, timeout: float) -> float | None:
    """Seconds from the reboot command to SSH answering with a new boot id; None if hung."""
    target = lab.ssh_target(name)
    before = _boot_id(target)
    with ssh.connect(target) as client:
        started = time.monotonic()
        ssh.run(client, "systemctl reboot", timeout=30)
    while time.monotonic() - started < timeout:
        time.sleep(2)
        now = _boot_id(target)
        if now and now != before:
            return time.monotonic() - started
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()

    with private_lab() as lab:
        lab.up(["rebooted", "busy"], report=quiet)
        with ssh.connect(lab.ssh_target("busy")) as client:
            ssh.run(client, BUSY)
        times, hung = [], 0
        for attempt in range(1, args.count + 1):
            seconds = _reboot(lab, "rebooted", args.timeout)
            if seconds is None:
                hung += 1
                print(f"reboot {attempt:2}: HUNG (no new boot id in {args.timeout:.0f} s)")
                lab.destroy("rebooted")
                lab.up(["rebooted"], report=quiet)
            else:
                times.append(seconds)
                print(f"reboot {attempt:2}: back in {seconds:5.1f} s", flush=True)
        log = (lab.files("rebooted").dir / LOG_FILE).read_text()
        recoveries = [line for line in log.splitlines() if "recovered by a power cycle" in line]
        power_cycles = log.count("guest reset: power-cycling")
        print(f"\nreboots: {args.count}, hung: {hung}, with a busy host beside it (TCG)")
        print(f"power cycles after a guest reset: {power_cycles}")
        print(f"recoveries (firmware stall or panic, power-cycled again): {len(recoveries)}")
        for line in recoveries:
            print(f"  {line}")
        if times:
            print(f"time back to SSH: median {statistics.median(times):.1f} s, "
                  f"max {max(times):.1f} s, min {min(times):.1f} s")
    return 1 if hung else 0


if __name__ == "__main__":
    sys.exit(main())
