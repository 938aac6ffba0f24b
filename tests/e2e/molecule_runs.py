"""Molecule scenarios as background runs, started so that both cores stay busy.

The whole guest stage (molecule/debian-guest-stage) keeps one lab host busy for about 26 minutes
under emulation, most of it dpkg on one core. Run after the rest of the suite, it alone would
take CI past its limit; started as soon as the suite has collected tests/e2e/test_molecule.py,
it runs beside the other tests, which mostly keep one core busy. When it exits, its core is free
and the two host-setup scenarios start there (about 9 min each), or at once where the guest
stage's scenario was deselected. ``test_molecule.py``'s tests, one per scenario, run last, so
that every other test runs beside them; each starts its run if it has not started yet, then waits
for it and judges it.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MOLECULE_TEST = "tests/e2e/test_molecule.py"
STARTED_WITH_THE_SUITE = ("debian-guest-stage",)
# Measured 2026-12-07: the guest stage ended at 26 min, and the second core then idled until
# test_molecule.py started these two at 34.9 min, which made them the suite's last 9 minutes.
STARTED_WHEN_IT_ENDS = ("intel-grub", "amd-systemd-boot")
# Each run's limit from its own start. The guest stage took 26 min beside the rest of the suite
# (2026-12-07, mitigations=off and one initramfs rebuild; 52 min before, 70 before mitogen):
# the limit is CI's own 90 min, less set-up and lint.
RUN_SECONDS = 5100

RUNS = pytest.StashKey["ScenarioRuns"]()


@dataclass
class ScenarioRun:
    scenario: str
    log: Path
    process: subprocess.Popen
    started: float
    then: Callable[[], None]  # called once the process has exited, from a thread of its own
    ended: float | None = None  # when the process exited, not when a test asked

    def __post_init__(self) -> None:
        threading.Thread(target=self._note_the_end, name=f"molecule {self.scenario}",
                         daemon=True).start()

    def _note_the_end(self) -> None:
        self.process.wait()
        self.ended = time.monotonic()
        self.then()

    @classmethod
    def start(cls, scenario: str, lab: Path, then: Callable[[], None]) -> ScenarioRun:
        bin_dir = str(Path(sys.executable).parent)
        env = {**os.environ, "GPUPROV_LAB_DIR": str(lab), "PATH": f"{bin_dir}:{os.environ['PATH']}",
               "ANSIBLE_FORCE_COLOR": "0", "PY_COLORS": "0"}
        log = lab / f"{scenario}.log"
        with log.open("w") as out:  # a file, not a pipe: no run waits on its reader
            process = subprocess.Popen([f"{bin_dir}/molecule", "test", "-s", scenario], cwd=ROOT,
                                       env=env, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        return cls(scenario, log, process, time.monotonic(), then)

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



class ScenarioRuns:
    """Every run of the session, in one lab, each scenario started at most once.

    Runs start from two threads (the test's, and the thread that sees a run end), so starting
    is under a lock; once the session closes, nothing more starts."""

    def __init__(self, lab: Path) -> None:
        self.lab = lab
        self.collected = time.monotonic()  # the suite's tests start now
        self._runs: dict[str, ScenarioRun] = {}
        self._lock = threading.Lock()
        self._closed = False

    def start(self, scenario: str, then_start: tuple[str, ...] = ()) -> None:
        """Start SCENARIO unless it has started (or the session is over); when it exits,
        start THEN_START."""
        def start_the_next() -> None:
            for next_scenario in then_start:
                self.start(next_scenario)

        with self._lock:
            if not self._closed and scenario not in self._runs:
                self._runs[scenario] = ScenarioRun.start(scenario, self.lab, start_the_next)

    def __getitem__(self, scenario: str) -> ScenarioRun:
        with self._lock:
            return self._runs[scenario]

    def all(self) -> list[ScenarioRun]:
        with self._lock:
            return list(self._runs.values())

    def close(self) -> list[ScenarioRun]:
        """Start nothing more, stop what still runs; every run there was."""
        with self._lock:
            self._closed = True
            runs = list(self._runs.values())
        for run in runs:
            run.stop()
        return runs


def pytest_collection_modifyitems(items):
    """test_molecule.py last: it waits for the scenarios, and every other test can run beside
    them instead of after them."""
    items.sort(key=lambda item: item.nodeid.startswith(MOLECULE_TEST))  # stable: order kept


def pytest_collection_finish(session):
    collected = {item.callspec.params["scenario"] for item in session.items
                 if item.nodeid.startswith(MOLECULE_TEST)}
    if session.config.option.collectonly or not collected:
        return
    # Short: QEMU's control sockets live under it, and Unix socket paths are limited.
    runs = ScenarioRuns(Path(tempfile.mkdtemp(prefix="gpuprov-molecule-")))
    session.config.stash[RUNS] = runs
    first = [scenario for scenario in STARTED_WITH_THE_SUITE if scenario in collected]
    then = tuple(scenario for scenario in STARTED_WHEN_IT_ENDS if scenario in collected)
    for scenario in first:
        runs.start(scenario, then_start=then)
    if not first:  # their core is free now
        for scenario in then:
            runs.start(scenario)


def pytest_terminal_summary(terminalreporter, config):
    """Each scenario's start and wall time, which the test's duration hides: the budget's
    largest items."""
    runs = config.stash.get(RUNS, None)
    if runs is None:
        return
    for run in runs.all():
        if run.ended is not None:
            terminalreporter.write_line(
                f"molecule {run.scenario}: started at {(run.started - runs.collected) / 60:.1f} "
                f"min, ran {(run.ended - run.started) / 60:.1f} min, exit "
                f"{run.process.returncode}")


def pytest_sessionfinish(session):
    """Whatever still runs goes with the session, and with it every QEMU of its lab."""
    from tests.conftest import qemu_pids_under

    runs = session.config.stash.get(RUNS, None)
    if runs is None:
        return
    finished = runs.close()
    for pid in qemu_pids_under(runs.lab, b"gpuprov.lab.supervisor") + qemu_pids_under(runs.lab):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # A failed run's lab keeps its logs (molecule's, and the lab's consoles of boots that
    # failed or were recovered) for whoever looks next.
    if all(run.process.returncode == 0 for run in finished):
        shutil.rmtree(runs.lab, ignore_errors=True)


@pytest.fixture
def molecule_runs(request) -> ScenarioRuns:
    """The session's scenario runs (made by ``pytest_collection_finish`` when it collected
    test_molecule.py); the session's end stops whatever still runs."""
    return request.config.stash[RUNS]
