"""What a playbook run did, per host, decoded from ansible-runner's job events. No I/O.

ansible-runner reports every step of a run as an event (``runner_on_ok``, ``runner_on_failed``,
``runner_on_unreachable``, ... and ``playbook_on_stats`` at the end, with each host's
counters). This module turns that list into a result gpuprov can reason about: per host, what
changed (with the diffs), what failed, whether it could not be reached, and whether it was
rebooted, which is read from the reboot module's own result, never from a task's name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

# One outcome per host, worst last: a fleet's outcome is its worst host's.
OK, CHANGED, FAILED, UNREACHABLE = "ok", "changed", "failed", "unreachable"
# The role whose failure means "another run is changing this host" (roles/host_lock).
LOCK_ROLE = "host_lock"


@dataclass
class Change:
    host: str
    task: str
    diffs: list[str] = field(default_factory=list)


@dataclass
class HostRun:
    """One host's part of a run."""

    host: str
    changes: list[Change] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # "task: message", in order
    unreachable: str | None = None  # why the connection failed, when it did
    rebooted: bool = False  # the reboot module rebooted it (or, in check mode, would)
    locked_by: str | None = None  # refused by the host_lock role: another run's message
    last_task: str | None = None  # the last task that started on it

    @property
    def outcome(self) -> str:
        if self.unreachable is not None:
            return UNREACHABLE
        if self.failures:
            return FAILED
        return CHANGED if self.changes else OK


@dataclass
class PlaybookResult:
    rc: int
    hosts: dict[str, HostRun]
    output: list[str] = field(default_factory=list)  # the run's last lines, for odd failures

    @property
    def changes(self) -> list[Change]:
        return [c for run in self.hosts.values() for c in run.changes]

    @property
    def failures(self) -> list[str]:
        failures = [f"{run.host}: {f}" for run in self.hosts.values() for f in run.failures]
        failures += [f"{run.host}: unreachable: {run.unreachable}"
                     for run in self.hosts.values() if run.unreachable is not None]
        if self.rc != 0 and not failures:
            # ansible-playbook failed before any task (a syntax error, no host matched).
            failures = [line for line in self.output if line.strip()] or [
                f"ansible-playbook exited {self.rc}"]
        return failures

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.failures

    def host(self, name: str) -> HostRun:
        return self.hosts.get(name) or HostRun(name)


def render_diff(diff: dict) -> str:
    """A module's diff as unified-diff text (it comes prepared, or as before and after)."""
    if "prepared" in diff:
        return diff["prepared"]
    before, after = diff.get("before", ""), diff.get("after", "")
    header = f"--- {diff.get('before_header', 'before')}\n+++ {diff.get('after_header', 'after')}"
    if isinstance(before, dict) or isinstance(after, dict):
        return f"{header}\n- {before}\n+ {after}"
    return f"{header}\n" + "".join(f"- {line}\n" for line in str(before).splitlines()) + "".join(
        f"+ {line}\n" for line in str(after).splitlines())


def _diffs(res: dict) -> list[str]:
    diffs = res.get("diff") or []
    diffs = diffs if isinstance(diffs, list) else [diffs]
    # Loop tasks report per item; the item results carry their own diffs.
    for item in res.get("results", []):
        item_diff = item.get("diff") or []
        diffs += item_diff if isinstance(item_diff, list) else [item_diff]
    return [render_diff(d) for d in diffs if d]


def _message(res: dict) -> str:
    return str(res.get("msg") or res.get("stderr") or res)


def decode(rc: int, events: Iterable[dict]) -> PlaybookResult:
    """The result of a run from its events, in the order ansible-runner emitted them."""
    hosts: dict[str, HostRun] = {}
    output: list[str] = []

    def run_of(name: str) -> HostRun:
        return hosts.setdefault(name, HostRun(name))

    for event in events:
        if event.get("stdout"):
            output = [*output, *event["stdout"].splitlines()][-5:]
        kind = event.get("event")
        data = event.get("event_data", {})
        res = data.get("res") or {}
        if kind == "playbook_on_stats":
            # Every host the play matched, including those no task reached.
            for counter in ("ok", "changed", "failures", "dark", "skipped", "processed"):
                for name in data.get(counter) or {}:
                    run_of(name)
            continue
        name, task = data.get("host"), data.get("task", "")
        if not name:
            continue
        run = run_of(name)
        if kind == "runner_on_start":
            run.last_task = task
        elif kind == "runner_on_ok":
            if res.get("changed"):
                run.changes.append(Change(name, task, _diffs(res)))
            if res.get("rebooted") is True:
                run.rebooted = True
        elif kind == "runner_on_failed" and not data.get("ignore_errors"):
            run.failures.append(f"{task}: {_message(res)}")
            if data.get("role") == LOCK_ROLE:
                run.locked_by = _message(res)
        elif kind == "runner_on_unreachable":
            run.unreachable = _message(res)
    return PlaybookResult(rc, hosts, output)
