"""The lab's supervisor on a real QEMU: a power-on that makes no progress is recorded (console,
registers, command line) where it outlives the host, power-cycled a bounded number of times,
then given up on; stopping the supervisor, however hard, stops its QEMU.

The machine is started paused (``-S``), so its firmware never prints a byte: exactly what the
hang in shared/lab-hang looked like from outside, without waiting for a rare hang."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuprov.lab.supervisor import LOG_FILE, Launch

pytestmark = pytest.mark.skipif(not shutil.which("qemu-system-x86_64"),
                                reason="needs QEMU (make setup installs it)")


def _start(host: Path, *, firmware_timeout: float, max_recoveries: int) -> subprocess.Popen:
    host.mkdir(parents=True, exist_ok=True)
    argv = ["qemu-system-x86_64", "-S", "-machine", "q35", "-accel", "tcg", "-m", "64",
            "-nodefaults", "-display", "none", "-no-reboot",
            "-chardev", f"file,id=console,path={host / 'console.log'},append=on",
            "-serial", "chardev:console",
            "-qmp", f"unix:{host / 'sup.sock'},server=on,wait=off",
            "-pidfile", str(host / "qemu.pid")]
    Launch(name="stuck", argv=argv, qmp_socket=str(host / "sup.sock"),
           console_log=str(host / "console.log"), failures_dir=str(host.parent / "failures"),
           firmware_timeout=firmware_timeout, max_recoveries=max_recoveries).write(host)
    return subprocess.Popen([sys.executable, "-m", "gpuprov.lab.supervisor", str(host)],
                            stdin=subprocess.DEVNULL, start_new_session=True)


def _alive(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


def _wait_for(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_silent_power_on_is_recorded_power_cycled_and_finally_given_up(tmp_path):
    supervisor = _start(tmp_path / "host", firmware_timeout=2, max_recoveries=2)
    assert supervisor.wait(timeout=120) == 1

    log = (tmp_path / "host" / LOG_FILE).read_text()
    assert log.count("started (power-on)") == 3
    assert log.count("recovered by a power cycle") == 2
    assert "giving up after 2 recoveries" in log
    records = sorted((tmp_path / "failures").iterdir())
    assert len(records) == 3
    for record in records:
        assert "the firmware printed nothing for" in (record / "reason.txt").read_text()
        registers = (record / "qmp-registers.txt").read_text()
        assert "CPU#0" in registers and "EAX=" in registers and "CPU #0: thread_id" in registers
        assert "-no-reboot" in (record / "qemu-argv.txt").read_text()
        assert (record / "console.log").exists()
    # Each power cycle marks its start in the console, as the lab's first start does.
    assert (tmp_path / "host" / "console.log").read_text().count("(power cycle)") == 2


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_the_supervisor_stops_its_qemu(tmp_path, how):
    host = tmp_path / "host"
    supervisor = _start(host, firmware_timeout=600, max_recoveries=0)
    _wait_for(lambda: (host / "qemu.pid").exists() and (host / "qemu.pid").read_text().strip())
    qemu = int((host / "qemu.pid").read_text())
    assert _alive(qemu)
    os.kill(supervisor.pid, how)
    supervisor.wait(timeout=30)
    _wait_for(lambda: not _alive(qemu))
    if how == signal.SIGTERM:
        assert "stopped: stopped by the lab" in (host / LOG_FILE).read_text()
