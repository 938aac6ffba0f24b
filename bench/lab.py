"""Lab figures: image build, boot vs resume to SSH, a stage snapshot's miss vs hit, host setup
against its floor, memory per host.

    .venv/bin/python bench/lab.py [--cold-image] [--hosts 2]

Everything runs in a private lab directory with a private, empty checkpoint cache, so the first
host of its kind really boots and the first `--after host-setup` really runs the stage.
--cold-image also builds the image into an empty cache (about 2 minutes, from Debian's archive).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from host_setup import floor_parts, timed_gpuprov, timed_ssh
from private_lab import private_lab, quiet

from gpuprov.lab.checkpoints import CheckpointCache
from gpuprov.lab.image import ImageCache
from gpuprov.stages.snapshots import STAGES


def _pss_mib(pid: int) -> float:
    """Proportional set size: the memory a process really costs, shared pages split fairly."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def _timed(action) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold-image", action="store_true", help="also time a build from nothing")
    parser.add_argument("--hosts", type=int, default=2, help="hosts to resume at once")
    args = parser.parse_args()
    boots = {"grub", "systemd-boot"}

    if args.cold_image:
        with tempfile.TemporaryDirectory(prefix="gpuprov-bench-cache-") as cache_dir:
            seconds = _timed(lambda: ImageCache(Path(cache_dir)).ensure(boots, quiet))
            print(f"image build, cold (both boot variants):   {seconds:7.1f} s")
    cache = ImageCache()
    seconds = _timed(lambda: cache.ensure(boots, quiet))
    print(f"image build, cached:                       {seconds:7.1f} s")

    host_setup = STAGES["host-setup"]
    with tempfile.TemporaryDirectory(prefix="gpuprov-bench-checkpoints-") as checkpoints, \
            private_lab(cache, CheckpointCache(Path(checkpoints))) as lab:
        cold = _timed(lambda: lab.up(["cold"], report=quiet, cold=True))
        print(f"boot to SSH, --cold:                       {cold:7.1f} s")
        first = _timed(lambda: lab.up(["first"], report=quiet))
        print(f"boot to SSH + checkpoint (cache miss):     {first:7.1f} s")
        lab.destroy("cold")
        lab.destroy("first")
        resumed = _timed(lambda: lab.up(["resumed"], report=quiet))
        print(f"resume to SSH (cache hit):                 {resumed:7.1f} s"
              f"  ({cold / resumed:.0f}x faster than booting)")
        more = [f"resumed{i}" for i in range(1, args.hosts)]
        if more:
            print(f"resume to SSH, {len(more)} more host(s) at once:   "
                  f"{_timed(lambda: lab.up(more, report=quiet)):7.1f} s")
        time.sleep(5)
        for name in ["resumed", *more]:
            print(f"memory (PSS) of {name}'s QEMU:        {_pss_mib(lab.qemu_pid(name)):7.0f} MiB"
                  f"  (guest RAM {lab.spec(name).memory_mib} MiB)")
            lab.destroy(name)

        miss = _timed(lambda: lab.up(["staged"], report=quiet, after=host_setup))
        print(f"lab up --after host-setup, miss:           {miss:7.1f} s  (the stage, for real)")
        lab.destroy("staged")
        hit = _timed(lambda: lab.up(["staged"], report=quiet, after=host_setup))
        print(f"lab up --after host-setup, hit:            {hit:7.1f} s")
        lab.destroy("staged")

        lab.up(["setup"], report=quiet)
        setup = timed_gpuprov(lab.root, "host", "setup", "setup", "--yes")
        regenerate, initramfs, reboot = floor_parts(lab, "setup", "grub")
        floor = regenerate + initramfs + reboot
        print(f"host setup (gpuprov host setup --yes):     {setup:7.1f} s")
        print(f"  its floor on the same host:              {floor:7.1f} s  (boot config "
              f"{regenerate:.1f} + initramfs {initramfs:.1f} + reboot {reboot:.1f})")
        print(f"  host setup / floor:                      {setup / floor:7.2f}")
        # Where gpuprov's own cost above the floor goes: setup inspects before and after, and
        # every Ansible connection (the run, and again after the reboot) starts Python there.
        inspect = timed_gpuprov(lab.root, "host", "inspect", "setup")
        python = timed_ssh(lab, "setup", "python3 -c pass")
        print(f"  host inspect (twice per setup):          {inspect:7.1f} s")
        print(f"  python3 start-up in the guest:           {python:7.1f} s  (over SSH)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
