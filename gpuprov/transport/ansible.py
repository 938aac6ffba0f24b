"""Run the project's playbooks through ansible-runner, as data.

The playbooks are the same ones users run with plain ``ansible-playbook``; this layer only adds
progress events and a result gpuprov can reason about (what changed, what failed, the diffs).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gpuprov.errors import GpuprovError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Change:
    host: str
    task: str
    diffs: list[str] = field(default_factory=list)


@dataclass
class PlaybookResult:
    rc: int
    changes: list[Change]
    failures: list[str]

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.failures


def playbook_path(name: str | Path) -> Path:
    """``playbooks/<name>`` of this checkout, or ``name`` itself when it is an absolute path."""
    path = PROJECT_ROOT / "playbooks" / name
    if not path.is_file():
        raise GpuprovError(f"playbook {name} not found under {PROJECT_ROOT / 'playbooks'}",
                           "run gpuprov from a checkout of the project (pip install -e .)")
    return path


def _search_path() -> str:
    """PATH with this Python's bin directory first: ansible-runner runs ``ansible-playbook``
    from PATH, and the one that belongs to gpuprov is installed next to it (the venv)."""
    here = Path(sys.executable).parent
    if not (here / "ansible-playbook").is_file() and not shutil.which("ansible-playbook"):
        raise GpuprovError("ansible-playbook is not installed",
                           "install gpuprov with its dependencies (make setup)")
    return os.pathsep.join([str(here), os.environ.get("PATH", os.defpath)])


def _strategy() -> dict[str, str]:
    """Mitogen's strategy for gpuprov's own runs: one Python per host for the whole play, not
    one per task. Under software emulation that is most of a playbook's time (measured on a
    lab host: host setup's tasks before the initramfs rebuild, 77 s plain, 12 s with it).
    Plain ``ansible-playbook`` keeps Ansible's default strategy; ``GPUPROV_MITOGEN=0`` gives
    gpuprov that too."""
    if os.environ.get("GPUPROV_MITOGEN", "1") == "0":
        return {}
    try:
        import ansible_mitogen
    except ImportError:
        return {}
    plugins = Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"
    return {"ANSIBLE_STRATEGY_PLUGINS": str(plugins), "ANSIBLE_STRATEGY": "mitogen_linear"}


def _render_diff(diff: dict) -> str:
    if "prepared" in diff:
        return diff["prepared"]
    before, after = diff.get("before", ""), diff.get("after", "")
    header = f"--- {diff.get('before_header', 'before')}\n+++ {diff.get('after_header', 'after')}"
    if isinstance(before, dict) or isinstance(after, dict):
        return f"{header}\n- {before}\n+ {after}"
    return f"{header}\n" + "".join(f"- {line}\n" for line in str(before).splitlines()) + "".join(
        f"+ {line}\n" for line in str(after).splitlines())


def run_playbook(
    name: str | Path,
    *,
    inventory: Path,
    limit: str,
    extravars: dict,
    check: bool = False,
    report: Callable[[str, str], None] | None = None,
) -> PlaybookResult:
    """Run ``playbooks/<name>`` against ``limit``; ``report(host, task)`` sees each task start."""
    import ansible_runner  # keeps the CLI's start fast

    changes: list[Change] = []
    failures: list[str] = []
    output: list[str] = []  # the last lines ansible-playbook printed, for failures without events

    def on_event(event: dict) -> bool:
        data = event.get("event_data", {})
        kind, host, task = event.get("event"), data.get("host", ""), data.get("task", "")
        if event.get("stdout"):
            output[:] = [*output, *event["stdout"].splitlines()][-5:]
        if kind == "runner_on_start" and report:
            report(host, task)
        elif kind == "runner_on_ok" and data.get("res", {}).get("changed"):
            res = data["res"]
            diffs = res.get("diff") or []
            diffs = diffs if isinstance(diffs, list) else [diffs]
            # Loop tasks report per item; the item results carry their own diffs.
            for item in res.get("results", []):
                item_diff = item.get("diff") or []
                diffs += item_diff if isinstance(item_diff, list) else [item_diff]
            changes.append(Change(host, task, [_render_diff(d) for d in diffs if d]))
        elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get(
            "ignore_errors"
        ):
            res = data.get("res", {})
            failures.append(f"{host}: {task}: {res.get('msg') or res.get('stderr') or res}")
        return False  # keep nothing on disk: the temporary directory goes away anyway

    private = Path(tempfile.mkdtemp(prefix="gpuprov-runner-"))
    try:
        runner = ansible_runner.run(
            private_data_dir=str(private),
            project_dir=str(PROJECT_ROOT),
            playbook=str(playbook_path(name)),
            # ansible-playbook runs in the project directory: a relative path would not be found.
            inventory=str(Path(inventory).absolute()),
            limit=limit,
            extravars=extravars,
            cmdline="--check --diff" if check else "--diff",
            envvars={"PATH": _search_path(),
                     "ANSIBLE_CONFIG": str(PROJECT_ROOT / "ansible.cfg"),
                     "ANSIBLE_FORCE_COLOR": "0",
                     **_strategy()},
            event_handler=on_event,
            quiet=True,
            suppress_env_files=True,
        )
    finally:
        shutil.rmtree(private, ignore_errors=True)
    if runner.rc != 0 and not failures:
        failures = [line for line in output if line.strip()] or [
            f"ansible-playbook exited {runner.rc}"]
    return PlaybookResult(runner.rc, changes, failures)
