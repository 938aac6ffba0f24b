"""Shared test plumbing: the real `gpuprov` CLI in a private lab directory, and a guarantee that
no lab host outlives its test, nor any QEMU the session, whatever failed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuprov.lab.hosts import Lab

GPUPROV = str(Path(sys.executable).with_name("gpuprov"))


def qemu_pids_under(directory: Path, program: bytes = b"qemu-system") -> list[int]:
    """Pids of ``program`` processes whose command line mentions ``directory`` (our lab's
    QEMUs, or with ``program=b"gpuprov.lab.supervisor"`` their supervisors)."""
    needle = str(directory).encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if needle in cmdline and program in cmdline:
                pids.append(int(proc.name))
    return pids


@pytest.fixture(scope="session")
def lab_root(tmp_path_factory) -> Path:
    # Short: QEMU's control sockets live under it and Unix socket paths are limited.
    root = tmp_path_factory.mktemp("lab")
    yield root
    for pid in qemu_pids_under(root, b"gpuprov.lab.supervisor") + qemu_pids_under(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def run_gpuprov(lab_root):
    """Run the installed CLI against the test lab; returns the CompletedProcess."""
    lab_env = {**os.environ, "GPUPROV_LAB_DIR": str(lab_root)}

    def run(*args: str, env: dict | None = None, check: bool = True, timeout: float = 1800):
        result = subprocess.run([GPUPROV, *args], capture_output=True, text=True,
                                env={**lab_env, **(env or {})}, stdin=subprocess.DEVNULL,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"gpuprov {' '.join(args)} exited {result.returncode}\n"
                                 f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result

    # For tests that start gpuprov themselves (several at once, with Popen).
    run.argv = [GPUPROV]
    run.env = lab_env
    yield run
    # Whatever a failed test left running goes now, not at the end of the session: under
    # software emulation a stray host would slow, and so break, the tests after it.
    if Lab(lab_root).names():
        run("lab", "destroy", "--all", check=False)


@pytest.fixture(scope="session")
def installed_gpuprov(tmp_path_factory) -> Path:
    """``gpuprov`` from a wheel of this checkout, installed in a fresh virtualenv of its own,
    as users install it (not editable): the playbooks and roles must come with the package."""
    root = Path(__file__).resolve().parents[1]
    work = tmp_path_factory.mktemp("installed")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
                    str(work / "dist"), str(root)], check=True, stdin=subprocess.DEVNULL)
    [wheel] = (work / "dist").glob("gpuprov-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True)
    subprocess.run([str(work / "venv/bin/pip"), "install", "--quiet", str(wheel)], check=True,
                   stdin=subprocess.DEVNULL)
    return work / "venv/bin/gpuprov"


SLOW_TEST_SECONDS = 30


class SlowTestLog:
    """Names each slow test as soon as it ends, with the suite's time so far: if CI's limit
    stops the run, its output still says where the time went (--durations prints only at
    the end, and only if the run gets there)."""

    def __init__(self, terminal):
        self.terminal = terminal
        self.started = time.monotonic()
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report):
        seconds = self.seconds.get(report.nodeid, 0.0) + report.duration
        self.seconds[report.nodeid] = seconds
        if report.when != "teardown":
            return
        del self.seconds[report.nodeid]  # teardown is a test's last report
        if seconds >= SLOW_TEST_SECONDS:
            self.terminal.write("\n")  # off the progress dots
            self.terminal.write_line(f"[{(time.monotonic() - self.started) / 60:5.1f} min] "
                                     f"{seconds:5.0f} s  {report.nodeid}")


@pytest.hookimpl(trylast=True)  # after the terminal reporter exists
def pytest_configure(config):
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None:
        config.pluginmanager.register(SlowTestLog(terminal), "gpuprov-slow-test-log")


# Declared here because pytest only honours `pytest_plugins` in the top-level conftest:
# - the `pve_sim` fixture (a simulated Proxmox VE node over HTTPS) for every test package;
# - molecule's scenarios as background runs, the longest started with the suite.
pytest_plugins = ["tests.pvesim.fixtures", "tests.e2e.molecule_runs"]
