"""Run the project's playbooks through ansible-runner, as data.

The playbooks are the same ones users run with plain ``ansible-playbook``; this layer only adds
progress events and a result gpuprov can reason about (what changed, what failed, the diffs).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from gpuprov.errors import GpuprovError
from gpuprov.transport.events import Change, PlaybookResult, decode

__all__ = ["Change", "PlaybookResult", "RunInterrupted", "playbook_path", "run_playbook"]

# The playbooks, roles and their ansible.cfg ship inside the package (a checkout links them
# from its top directory), so an installed gpuprov runs them from any directory.
CONTENT = Path(__file__).resolve().parents[1] / "ansible"


def playbook_path(name: str | Path) -> Path:
    """``playbooks/<name>`` of the installed content, or ``name`` itself when it is an absolute
    path."""
    path = CONTENT / "playbooks" / name
    if not path.is_file():
        raise GpuprovError(f"playbook {name} not found under {CONTENT / 'playbooks'}",
                           "reinstall gpuprov: its playbooks are part of the package")
    return path


def _search_path() -> str:
    """PATH with this Python's bin directory first: ansible-runner runs ``ansible-playbook``
    from PATH, and the one that belongs to gpuprov is installed next to it (the venv)."""
    here = Path(sys.executable).parent
    if not (here / "ansible-playbook").is_file() and not shutil.which("ansible-playbook"):
        raise GpuprovError("ansible-playbook is not installed",
                           "install gpuprov with its dependencies (make setup)")
    return os.pathsep.join([str(here), os.environ.get("PATH", os.defpath)])


def playbook_environment() -> dict[str, str]:
    """The settings gpuprov runs every playbook with: its ansible.cfg, and mitogen's strategy.

    Mitogen runs one Python per host for the whole play, not one per task. Under software
    emulation that is most of a playbook's time (measured on a lab host: host setup's tasks
    before the initramfs rebuild, 77 s plain, 12 s with it). Plain ``ansible-playbook`` keeps
    Ansible's default strategy; ``GPUPROV_MITOGEN=0`` gives gpuprov that too."""
    settings = {"ANSIBLE_CONFIG": str(CONTENT / "ansible.cfg")}
    # Only whether it is installed: strategy_plugins/mitogen_linear.py imports it, inside
    # ansible-playbook.
    mitogen = importlib.util.find_spec("ansible_mitogen") is not None
    if mitogen and os.environ.get("GPUPROV_MITOGEN", "1") != "0":
        settings |= {"ANSIBLE_STRATEGY_PLUGINS": str(CONTENT / "strategy_plugins"),
                     "ANSIBLE_STRATEGY": "mitogen_linear"}
    return settings


def run_playbook(
    name: str | Path,
    *,
    inventory: Path,
    limit: str,
    extravars: dict,
    check: bool = False,
    report: Callable[[str, str], None] | None = None,
    forks: int | None = None,
) -> PlaybookResult:
    """Run ``playbooks/<name>`` against ``limit``; ``report(host, task)`` sees each task start.

    Ctrl-C cancels the run through ansible-runner and raises RunInterrupted, which carries
    what each host had done by then.
    """
    events: list[dict] = []

    def on_event(event: dict) -> bool:
        events.append(event)
        data = event.get("event_data", {})
        if event.get("event") == "runner_on_start" and report:
            report(data.get("host", ""), data.get("task", ""))
        return False  # keep nothing on disk: the temporary directory goes away anyway

    with _interruptible() as interrupted:
        options = ["--check"] if check else []
        options += ["--diff", *([f"--forks={forks}"] if forks else [])]
        rc = _run(name, inventory=inventory, limit=limit, extravars=extravars,
                  options=" ".join(options), on_event=on_event,
                  cancelled=_Cancel(interrupted.is_set))
    result = decode(rc, events)
    if interrupted.is_set():
        raise RunInterrupted(result)
    return result


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a playbook run; ``result`` says how far each host got."""

    def __init__(self, result: PlaybookResult) -> None:
        super().__init__()
        self.result = result


@contextlib.contextmanager
def _interruptible() -> Iterator[threading.Event]:
    """While a run is on, Ctrl-C asks ansible-runner to cancel it, rather than killing gpuprov
    half-way through reading its events. Outside the main thread (no signals) it does nothing."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


class _Cancel:
    """ansible-runner's ``cancel_callback``, which stops ansible-playbook's workers too.

    ansible-runner cancels by sending SIGKILL to the playbook's process group. Each of
    Ansible's workers (one per host and task) runs in a session of its own, out of that
    group's reach: after a Ctrl-C, the worker of the task that was running lived on, orphaned,
    and could go on changing its host. ansible-playbook stops its workers itself when it gets
    SIGTERM, so that comes first; the SIGKILL follows only if it has not exited by then.
    """

    GRACE_SECONDS = 10.0

    def __init__(self, interrupted: Callable[[], bool]) -> None:
        self.interrupted = interrupted
        self.terminated_at: float | None = None

    def __call__(self) -> bool:
        if not self.interrupted():
            return False
        if self.terminated_at is None:
            self.terminated_at = time.monotonic()
            for pid in _ansible_playbooks_started_here():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        return time.monotonic() - self.terminated_at > self.GRACE_SECONDS


def _ansible_playbooks_started_here() -> list[int]:
    """The ansible-playbook processes that are children of this one."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and any(part.endswith(b"ansible-playbook") for part in command):
            found.append(int(proc.name))
    return found


def _run(name: str | Path, *, inventory: Path, limit: str, extravars: dict, options: str,
         on_event: Callable[[dict], bool], cancelled: Callable[[], bool]) -> int:
    """ansible-playbook, through ansible-runner, as users would run it; its exit status."""
    import ansible_runner  # keeps the CLI's start fast

    private = Path(tempfile.mkdtemp(prefix="gpuprov-runner-"))
    try:
        runner = ansible_runner.run(
            private_data_dir=str(private),
            project_dir=str(CONTENT),
            playbook=str(playbook_path(name)),
            # ansible-playbook runs in the project directory: a relative path would not be found.
            inventory=str(Path(inventory).absolute()),
            limit=limit,
            extravars=extravars,
            cmdline=options,
            envvars={"PATH": _search_path(), "ANSIBLE_FORCE_COLOR": "0",
                     **playbook_environment()},
            event_handler=on_event,
            cancel_callback=cancelled,
            quiet=True,
            suppress_env_files=True,
        )
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return runner.rc
