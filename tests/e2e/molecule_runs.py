"""Molecule scenarios as background runs, and the longest one started with the suite.

The whole guest stage (molecule/debian-guest-stage) keeps one lab host busy for about 40 minutes
under emulation, most of it dpkg on one core. Run after the rest of the suite, it alone would
take CI past its limit; started as soon as the suite has collected tests/e2e/test_molecule.py,
it runs beside the other tests, which leave the second core mostly idle. The other scenarios
start when their test does. ``test_molecule.py`` waits for every run and judges it.

Each run is the real `molecule test`, in a lab directory of its own, so that no other test's
clean-up (``run_gpuprov`` destroys every host of *its* lab) touches the scenarios' hosts.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MOLECULE_TEST = "tests/e2e/test_molecule.py"
STARTED_WITH_THE_SUITE = ("debian-guest-stage",)
# Each run's limit from its own start. The guest stage took 26 min beside the rest of the suite
# (2026-12-07, mitigations=off and one initramfs rebuild; 52 min before, 70 before mitogen):
# the limit is CI's own 90 min, less set-up and lint.
RUN_SECONDS = 5100

RUNS = pytest.StashKey[dict]()
LAB = pytest.StashKey[Path]()


@dataclass
class ScenarioRun:
    scenario: str
    log: Path
    process: subprocess.Popen
    started: float
    ended: float | None = None  # when the process exited, not when a test asked

    def __post_init__(self) -> None:
        threading.Thread(target=self._note_the_end, name=f"molecule {self.scenario}",
                         daemon=True).start()

    def _note_the_end(self) -> None:
        self.process.wait()
        self.ended = time.monotonic()

    @classmethod
    def start(cls, scenario: str, lab: Path) -> ScenarioRun:
        bin_dir = str(Path(sys.executable).parent)
        env = {**os.environ, "GPUPROV_LAB_DIR": str(lab), "PATH": f"{bin_dir}:{os.environ['PATH']}",
               "ANSIBLE_FORCE_COLOR": "0", "PY_COLORS": "0"}
        log = lab / f"{scenario}.log"
        with log.open("w") as out:  # a file, not a pipe: no run waits on its reader
            process = subprocess.Popen([f"{bin_dir}/molecule", "test", "-s", scenario], cwd=ROOT,
                                       env=env, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        return cls(scenario, log, process, time.monotonic())

    def wait(self) -> int | None:
        """The run's exit status, or None if it outran RUN_SECONDS (it is then stopped)."""
        try:
            return self.process.wait(
                timeout=max(0.0, self.started + RUN_SECONDS - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            return None

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def output(self) -> str:
        return re.sub(r"\x1b\[[0-9;]*m", "", self.log.read_text())  # colour, if any



def pytest_collection_finish(session):
    if session.config.option.collectonly or not any(
            item.nodeid.startswith(MOLECULE_TEST) for item in session.items):
        return
    # Short: QEMU's control sockets live under it, and Unix socket paths are limited.
    lab = Path(tempfile.mkdtemp(prefix="gpuprov-molecule-"))
    session.config.stash[LAB] = lab
    session.config.stash[RUNS] = {s: ScenarioRun.start(s, lab) for s in STARTED_WITH_THE_SUITE}


def pytest_terminal_summary(terminalreporter, config):
    """Each scenario's own wall time, which the test's duration hides: the budget's largest
    items."""
    for run in config.stash.get(RUNS, {}).values():
        if run.ended is not None:
            terminalreporter.write_line(
                f"molecule {run.scenario}: {(run.ended - run.started) / 60:.1f} min, exit "
                f"{run.process.returncode}")


def pytest_sessionfinish(session):
    """Whatever still runs goes with the session, and with it every QEMU of its lab."""
    from tests.conftest import qemu_pids_under

    runs = session.config.stash.get(RUNS, {}).values()
    for run in runs:
        run.stop()
    lab = session.config.stash.get(LAB, None)
    if lab is not None:
        for pid in qemu_pids_under(lab, b"gpuprov.lab.supervisor") + qemu_pids_under(lab):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # A failed run's lab keeps its logs (molecule's, and the lab's consoles of boots that
        # failed or were recovered) for whoever looks next.
        if all(run.process.returncode == 0 for run in runs):
            shutil.rmtree(lab, ignore_errors=True)


@pytest.fixture
def molecule_runs(request) -> tuple[Path, dict[str, ScenarioRun]]:
    """The molecule lab and the runs started with the suite, by scenario; the test adds its
    own to the same dictionary, so that the session's end stops them too. (Collecting
    test_molecule.py made both: ``pytest_collection_finish``.)"""
    return request.config.stash[LAB], request.config.stash[RUNS]
