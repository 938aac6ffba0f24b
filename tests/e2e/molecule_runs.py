"""Molecule scenarios as background runs, and the longest one started with the suite.

The whole guest stage (molecule/debian-guest-stage) keeps one lab host busy for about 26 minutes
under emulation, most of it dpkg on one core. Run after the rest of the suite, it alone would
take CI past its limit; started as soon as the suite has collected tests/e2e/test_molecule.py,
it runs beside the other tests. The other scenarios start together, when the first test of
``test_molecule.py`` does: beside the lab-host tests they slow those more than they gain
(measured 2026-12-07, started when the guest stage ended: the libvirt chain took 941 s instead
of 372, and the suite 53 min instead of 47). ``test_molecule.py`` has one test per scenario;
each waits for its run and judges it.

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

RUNS = pytest.StashKey["ScenarioRuns"]()


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



class ScenarioRuns:
    """The session's molecule lab and its runs, each scenario started at most once."""

    def __init__(self, lab: Path, scenarios: list[str]) -> None:
        self.lab = lab
        self.scenarios = scenarios  # those collected, in the tests' order
        self._runs: dict[str, ScenarioRun] = {}

    def start(self, scenarios: list[str] | tuple[str, ...]) -> None:
        for scenario in scenarios:
            if scenario in self.scenarios and scenario not in self._runs:
                self._runs[scenario] = ScenarioRun.start(scenario, self.lab)

    def __getitem__(self, scenario: str) -> ScenarioRun:
        return self._runs[scenario]

    def all(self) -> list[ScenarioRun]:
        return list(self._runs.values())


def pytest_collection_finish(session):
    scenarios = [item.callspec.params["scenario"] for item in session.items
                 if item.nodeid.startswith(MOLECULE_TEST)]
    if session.config.option.collectonly or not scenarios:
        return
    # Short: QEMU's control sockets live under it, and Unix socket paths are limited.
    runs = ScenarioRuns(Path(tempfile.mkdtemp(prefix="gpuprov-molecule-")), scenarios)
    session.config.stash[RUNS] = runs
    runs.start(STARTED_WITH_THE_SUITE)


def pytest_terminal_summary(terminalreporter, config):
    """Each scenario's own wall time, which the test's duration hides: the budget's largest
    items."""
    runs = config.stash.get(RUNS, None)
    for run in runs.all() if runs else []:
        if run.ended is not None:
            terminalreporter.write_line(
                f"molecule {run.scenario}: {(run.ended - run.started) / 60:.1f} min, exit "
                f"{run.process.returncode}")


def pytest_sessionfinish(session):
    """Whatever still runs goes with the session, and with it every QEMU of its lab."""
    from tests.conftest import qemu_pids_under

    runs = session.config.stash.get(RUNS, None)
    if runs is None:
        return
    for run in runs.all():
        run.stop()
    for pid in qemu_pids_under(runs.lab, b"gpuprov.lab.supervisor") + qemu_pids_under(runs.lab):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # A failed run's lab keeps its logs (molecule's, and the lab's consoles of boots that
    # failed or were recovered) for whoever looks next.
    if all(run.process.returncode == 0 for run in runs.all()):
        shutil.rmtree(runs.lab, ignore_errors=True)


@pytest.fixture
def molecule_runs(request) -> ScenarioRuns:
    """The session's scenario runs (made by ``pytest_collection_finish`` when it collected
    test_molecule.py); the session's end stops whatever still runs."""
    return request.config.stash[RUNS]
