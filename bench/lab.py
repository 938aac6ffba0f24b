"""Lab figures: image build time (cold and cached), boot-to-SSH time, memory per host.

    .venv/bin/python bench/lab.py [--cold]

--cold builds the image into an empty cache directory (about 2 minutes, downloads from Debian's
archive); without it the cold figure is skipped. Hosts boot in a private lab directory and are
destroyed afterwards.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from private_lab import private_lab, quiet

from gpuprov.lab.image import ImageCache


def _pss_mib(pid: int) -> float:
    """Proportional set size: the memory a process really costs, shared pages split fairly."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="also time a build from nothing")
    parser.add_argument("--hosts", type=int, default=2, help="hosts to boot concurrently")
    args = parser.parse_args()
    boots = {"grub", "systemd-boot"}

    if args.cold:
        with tempfile.TemporaryDirectory(prefix="gpuprov-bench-cache-") as cache_dir:
            started = time.monotonic()
            ImageCache(Path(cache_dir)).ensure(boots, quiet)
            print(f"image build, cold (both boot variants): {time.monotonic() - started:7.1f} s")

    cache = ImageCache()
    started = time.monotonic()
    cache.ensure(boots, quiet)
    print(f"image build, cached:                     {time.monotonic() - started:7.1f} s")

    names = [f"bench{i}" for i in range(args.hosts)]
    with private_lab(cache) as lab:
        started = time.monotonic()
        lab.up(names[:1], report=quiet)
        print(f"boot to SSH, one host:                   {time.monotonic() - started:7.1f} s")
        started = time.monotonic()
        lab.up(names[1:], report=quiet)
        if names[1:]:
            print(f"boot to SSH, {len(names) - 1} more host(s) at once:      "
                  f"{time.monotonic() - started:7.1f} s")
        time.sleep(5)  # let the guests settle after login becomes possible
        for name in names:
            print(f"memory (PSS) of {name}'s QEMU:            {_pss_mib(lab.pid(name)):7.0f} MiB"
                  f"  (guest RAM {lab.spec(name).memory_mib} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
