"""One lab host's QEMU, kept alive across guest reboots, and never left hanging.

``python -m gpuprov.lab.supervisor HOST_DIR`` runs detached for as long as the host is up. It
starts QEMU from ``HOST_DIR/launch.json`` with ``-no-reboot``, so that every guest reboot ends
the QEMU process, and starts a fresh one on the same disk: each reboot is a real power cycle.
A warm reset under software emulation could leave OVMF spinning before GRUB for good
(``shared/lab-hang``: the boot CPU looping in the firmware, the other vCPU halted); a cold
start never takes that path.

It also watches every boot. A power-on whose firmware prints nothing within
``firmware_timeout`` seconds, or a kernel that panics, is recorded (the console log, QEMU's
registers, the command line) under the lab's ``failures/`` directory, which outlives the host,
and the machine is power-cycled, at most ``max_recoveries`` times. A guest power-off, or QEMU
stopped from outside, ends the supervisor.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gpuprov.lab.qmp import Qmp, QmpError
from gpuprov.lab.spec import START_MARKER, boot_failure, stalled_boot

LAUNCH_FILE = "launch.json"
LOG_FILE = "supervisor.log"
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Launch:
    """What the lab hands its supervisor (``launch.json``)."""

    name: str
    argv: list[str]
    qmp_socket: str  # the supervisor's own QMP socket (the lab's commands use another)
    console_log: str
    failures_dir: str
    incoming: str | None = None  # a checkpoint to resume on the first start only
    firmware_timeout: float = 180
    max_recoveries: int = 3

    @classmethod
    def read(cls, host_dir: Path) -> Launch:
        return cls(**json.loads((host_dir / LAUNCH_FILE).read_text()))

    def write(self, host_dir: Path) -> None:
        (host_dir / LAUNCH_FILE).write_text(json.dumps(self.__dict__, indent=2) + "\n")


class Supervisor:
    def __init__(self, host_dir: Path) -> None:
        self.dir = host_dir
        self.launch = Launch.read(host_dir)
        self.qemu: subprocess.Popen | None = None
        self.stopping = False
        self.failures = 0

    def log(self, message: str) -> None:
        with open(self.dir / LOG_FILE, "a") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        recoveries = 0
        first = True
        while True:
            restoring = first and self.launch.incoming is not None
            outcome = self._boot(restoring, first)
            first = False
            if outcome == "reset":
                self.log("guest reset: power-cycling (a fresh QEMU on the same disk)")
                continue
            if outcome.startswith("stuck:"):
                recoveries += 1
                if recoveries > self.launch.max_recoveries:
                    self.log(f"giving up after {self.launch.max_recoveries} recoveries")
                    return 1
                self.log(f"recovered by a power cycle ({recoveries}/"
                         f"{self.launch.max_recoveries}): {outcome[6:]}")
                continue
            self.log(f"stopped: {outcome}")
            return 0 if outcome in ("guest powered off", "stopped by the lab") else 1

    # -- one power-on ------------------------------------------------------------------------

    def _boot(self, restoring: bool, first: bool) -> str:
        """Run QEMU once; "reset", "stuck: WHY", or why it ended for good."""
        console = Path(self.launch.console_log)
        if not first:
            with open(console, "a") as log:
                log.write(f"\n{START_MARKER} {self.launch.name} at {time.ctime()} "
                          "(power cycle) =====\n")
        start_offset = console.stat().st_size if console.exists() else 0
        argv = list(self.launch.argv)
        if restoring:
            argv += ["-incoming", self.launch.incoming]
        with open(self.dir / "qemu.log", "a") as qemu_log:
            qemu_log.write(f"\n== {time.ctime()}: {'restoring' if restoring else 'booting'}\n")
            qemu_log.flush()
            self.qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qemu_log,
                                         stderr=qemu_log, preexec_fn=_die_with_parent)
        self.log(f"QEMU pid {self.qemu.pid} started ({'restore' if restoring else 'power-on'})")
        started = time.monotonic()
        qmp = self._connect()
        reason = None
        if restoring:
            try:
                _resume(qmp)
            except QmpError as error:
                self._end_qemu()
                return f"the checkpoint did not resume: {error}"
            self.log("checkpoint resumed")
        try:
            while self.qemu.poll() is None:
                event = None
                if qmp is None:
                    time.sleep(1.0)
                else:
                    try:
                        event = qmp.event(1.0)
                    except QmpError:  # QEMU is going away; its exit status follows
                        qmp.close()
                        qmp = None
                if event and event.get("event") == "SHUTDOWN":
                    reason = event.get("data", {}).get("reason")
                if self.stopping:
                    break
                if reason is None and (why := self._stuck(console, start_offset, started,
                                                          restoring)):
                    self._record_failure(qmp, why, console)
                    self._end_qemu()
                    return f"stuck: {why}"
        finally:
            if qmp:
                qmp.close()
        self._end_qemu()
        if self.stopping:
            return "stopped by the lab"
        if reason == "guest-reset":
            return "reset"
        if reason == "guest-shutdown":
            return "guest powered off"
        return f"QEMU exited with status {self.qemu.returncode} ({reason or 'no shutdown event'})"

    def _connect(self) -> Qmp | None:
        deadline = time.monotonic() + 30
        while self.qemu.poll() is None and time.monotonic() < deadline:
            try:
                return Qmp(Path(self.launch.qmp_socket))
            except (OSError, QmpError):
                time.sleep(0.1)
        return None

    def _stuck(self, console: Path, offset: int, started: float, restoring: bool) -> str | None:
        try:
            with open(console, errors="replace") as log:
                log.seek(offset)
                output = log.read()
        except OSError:
            return None
        return boot_failure(output) or (None if restoring else stalled_boot(
            output, time.monotonic() - started, self.launch.firmware_timeout))

    def _record_failure(self, qmp: Qmp | None, why: str, console: Path) -> None:
        """Keep what shows why: it outlives the host, whoever cleans the host up."""
        self.failures += 1
        where = Path(self.launch.failures_dir) / (f"{self.launch.name}-"
                                                  f"{time.strftime('%Y%m%d-%H%M%S')}-"
                                                  f"{os.getpid()}-{self.failures}")
        where.mkdir(parents=True, exist_ok=True)
        (where / "reason.txt").write_text(why + "\n")
        (where / "qemu-argv.txt").write_text("\n".join(self.qemu.args) + "\n")
        with contextlib.suppress(OSError):
            shutil.copyfile(console, where / "console.log")
        registers = "QMP was not connected"
        if qmp:
            try:
                registers = "\n".join([
                    json.dumps(qmp.execute("query-status")),
                    "== info registers -a", qmp.hmp("info registers -a"),
                    "== info cpus", qmp.hmp("info cpus"),
                ])
            except QmpError as error:
                registers = f"could not read the registers: {error}"
        (where / "qmp-registers.txt").write_text(registers + "\n")
        self.log(f"boot failed: {why}; kept in {where}")

    def _end_qemu(self) -> None:
        if self.qemu.poll() is None:
            self.qemu.terminate()
            try:
                self.qemu.wait(10)
            except subprocess.TimeoutExpired:
                self.qemu.kill()
                self.qemu.wait()

    def _stop(self, _signum, _frame) -> None:
        self.stopping = True
        if self.qemu and self.qemu.poll() is None:
            self.qemu.terminate()


def _resume(qmp: Qmp | None, timeout: float = 120) -> None:
    """Wait for the incoming checkpoint to load, then run the guest (it was saved paused)."""
    if qmp is None:
        raise QmpError("QEMU exited before its control socket answered")
    qmp.wait_for_migration("loading the checkpoint", timeout)
    if not qmp.execute("query-status").get("running"):
        qmp.execute("cont")


def _die_with_parent() -> None:
    # If the supervisor itself is killed, its QEMU must not run on unwatched.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def main() -> int:
    return Supervisor(Path(sys.argv[1])).run()


if __name__ == "__main__":
    sys.exit(main())
