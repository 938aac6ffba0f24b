"""The whole suite's wall time, as CI runs it (`make test`), on a warm or a fresh machine.

    .venv/bin/python bench/suite.py            # warm: this checkout, its .venv, the usual cache
    .venv/bin/python bench/suite.py --fresh    # a fresh clone (no .venv), an empty image cache
    .venv/bin/python bench/suite.py --fresh --twice   # then again: that machine's second run

A fresh run clones the checkout's HEAD into a temporary directory and points
$GPUPROV_CACHE_DIR at an empty one, so the lab image is built, every first host of its kind
boots and every stage snapshot is made for real; only the Debian packages stay installed.
With --twice the suite runs a second time in the same checkout with the same cache, which is
what "a warm machine" means: everything the first run built and stored is there.
With --cold the suite runs with GPUPROV_LAB_COLD=1: no checkpoint is resumed or stored.
With --without-guest-stage the guest stage's own tests are left out (issue #14: what the stage
adds to CI is the difference between that figure and a whole suite's on the same machine).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Measured the same way before the checkpointed lab (issue #12): stop 10's clean-clone CI run.
# No warm (second-run) figure was measured before it.
BEFORE = {"fresh": 3899, "warm": None}
# Every test the guest stage (issue #14) brought: its molecule scenario, the CLI and the pure
# logic of driver matching, pins and prebuilt modules, its roles' filters and stand-ins.
GUEST_STAGE_TESTS = (
    "tests/e2e/test_molecule.py::test_molecule_scenario[debian-guest-stage]",
    "tests/cli/test_driver_build.py", "tests/cli/test_driver_match.py",
    "tests/cli/test_driver_pins.py", "tests/cli/test_guest.py",
    "tests/unit/test_apt_pins.py", "tests/unit/test_distro_pins.py",
    "tests/unit/test_driver_build.py", "tests/unit/test_driver_match.py",
    "tests/unit/test_guest_stage.py", "tests/unit/test_pinned_packages.py",
    "tests/unit/test_role_container_toolkit.py", "tests/unit/test_role_fabricmanager.py",
    "tests/unit/test_role_nvidia_driver_state.py", "tests/unit/test_standin_repositories.py",
)


def _make_test(checkout: Path, env: dict) -> tuple[float, int]:
    started = time.monotonic()
    result = subprocess.run(["make", "test"], cwd=checkout, env=env,
                            stdin=subprocess.DEVNULL, check=False)
    return time.monotonic() - started, result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="clone + empty cache, as in CI")
    parser.add_argument("--cold", action="store_true", help="GPUPROV_LAB_COLD=1")
    parser.add_argument("--twice", action="store_true",
                        help="run it again after the first run: the warm figure")
    parser.add_argument("--without-guest-stage", action="store_true",
                        help="leave out the guest stage's tests (issue #14's cost in CI)")
    args = parser.parse_args()
    env = {**os.environ, **({"GPUPROV_LAB_COLD": "1"} if args.cold else {})}
    if args.without_guest_stage:
        env["PYTEST_ADDOPTS"] = " ".join(  # after the caller's own options, if any
            [env.get("PYTEST_ADDOPTS", ""), *(f"--deselect={test}" for test in GUEST_STAGE_TESTS)]
        ).strip()
    scratch = Path(tempfile.mkdtemp(prefix="gpuprov-suite-")) if args.fresh else None
    checkout = ROOT
    runs = []
    try:
        if scratch:
            checkout = scratch / "clone"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(checkout)], check=True)
            env["GPUPROV_CACHE_DIR"] = str(scratch / "cache")
        runs.append(("fresh" if args.fresh else "warm", *_make_test(checkout, env)))
        if args.twice:
            runs.append(("warm, its second run", *_make_test(checkout, env)))
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    print()
    for kind, seconds, returncode in runs:
        kind += ", GPUPROV_LAB_COLD=1" if args.cold else ""
        kind += ", without the guest stage's tests" if args.without_guest_stage else ""
        print(f"suite ({kind}): {seconds / 60:.1f} min, exit {returncode}")
        before = BEFORE["fresh" if kind.startswith("fresh") else "warm"]
        if before:
            print(f"  before the checkpointed lab, measured the same way: {before / 60:.1f} min")
    return max(returncode for _kind, _seconds, returncode in runs)


if __name__ == "__main__":
    sys.exit(main())
