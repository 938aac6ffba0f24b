"""One runner for every stage that changes hosts, on one host or an Ansible host pattern.

    gather (in parallel) -> plan (pure, per host) -> preview (check mode, with diffs) ->
    confirm -> apply (one playbook run, in Ansible's batches) -> verify (in parallel)

A stage (``Stage``) says what it gathers, how it plans, which playbook applies a plan and how
the result is verified; the CLI says how each step is shown (``Ui``). The playbook run is the
same one ``ansible-playbook`` makes: its ``serial`` and ``max_fail_percentage`` come from
``--serial`` and ``--max-fail``, and every host gets its own plan as variables.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gpuprov import inventory as inventory_
from gpuprov.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    GpuprovError,
    UsageError,
    worst,
)
from gpuprov.transport import events
from gpuprov.transport.ansible import CONTENT, PlaybookResult, RunInterrupted, run_playbook

# What became of each host.
DONE = "done"  # changed, and verified
NOTHING_TO_DO = "nothing to do"
WOULD_CHANGE = "would change"  # --check, or not applied
REFUSED = "refused"  # a check said no before anything changed
FAILED = "failed"
UNREACHABLE = "unreachable"
NOT_RUN = "not run"  # the run stopped (--max-fail) before this host's batch
INTERRUPTED = "interrupted"

Report = Callable[[str, str], None]


@dataclass
class HostOutcome:
    host: str
    status: str | None = None
    exit_code: int = EXIT_OK
    message: str = ""  # why it was refused or failed; what was done
    hint: str | None = None
    changes: list[events.Change] = field(default_factory=list)
    rebooted: bool = False
    gathered: Any = None  # what the stage gathered before
    plan: Any = None
    verified: Any = None  # what the stage's verification found after

    def settle(self, status: str, exit_code: int, message: str = "",
               hint: str | None = None) -> None:
        self.status, self.exit_code, self.message, self.hint = status, exit_code, message, hint

    def settle_error(self, error: GpuprovError, status: str | None = None) -> None:
        if status is None:
            status = {EXIT_REFUSED: REFUSED, EXIT_UNREACHABLE: UNREACHABLE}.get(
                error.exit_code, FAILED)
        self.settle(status, error.exit_code, error.message, error.hint)

    @property
    def pending(self) -> bool:
        return self.status is None

    def to_json(self) -> dict:
        return {"host": self.host, "outcome": self.status, "exit_code": self.exit_code,
                "message": self.message, "hint": self.hint, "rebooted": self.rebooted,
                "changes": [c.task for c in self.changes]}


@dataclass
class StageRun:
    outcomes: list[HostOutcome]

    @property
    def exit_code(self) -> int:
        return worst(o.exit_code for o in self.outcomes)

    def to_json(self) -> dict:
        return {"exit_code": self.exit_code, "hosts": [o.to_json() for o in self.outcomes]}


@dataclass(frozen=True)
class Request:
    """How to run a stage: from the command line, the same for every stage."""

    check: bool = False  # preview only
    yes: bool = False  # confirmed in advance
    serial: str | None = None  # Ansible's serial: "2" or "25%"; None: every host at once
    max_fail: int | None = None  # Ansible's max_fail_percentage; None: the others go on
    forks: int = 16  # hosts gathered and verified at once, and Ansible's forks


class Stage(Protocol):
    playbook: str

    def gather(self, host: str, inventory: Path) -> Any:
        """What the plan needs from the host (read only)."""

    def plan(self, host: str, gathered: Any) -> Any:
        """The plan for one host, from what was gathered; no I/O. Raises a GpuprovError
        (Refused, UsageError, ...) when the host must not be changed."""

    def host_vars(self, plan: Any) -> dict:
        """One host's plan as the playbook's variables (what ``-e`` would give it)."""

    def has_work(self, plan: Any) -> bool | None:
        """True when the plan alone shows there is work; None when only the preview can tell."""

    def unchanged(self, host: str, plan: Any) -> str:
        """The preview shows no change: what to say, or raise if that is not fine."""

    def failed_unchanged_hint(self, host: str) -> str | None:
        """A hint for a run that failed having changed nothing on ``host``."""

    def verify(self, host: str, inventory: Path, plan: Any) -> Any:
        """Look again, independently of the playbook; raise if the host is not as planned."""


class Ui(Protocol):
    def planned(self, outcomes: Sequence[HostOutcome]) -> None: ...
    def changes(self, result: PlaybookResult, heading: str) -> None: ...
    def confirm(self, hosts: Sequence[str]) -> None: ...  # raises unless confirmed
    def progress(self) -> AbstractContextManager[Report]: ...


def run(stage: Stage, pattern: str, inventory: Path | None, request: Request,
        ui: Ui) -> StageRun:
    """Run ``stage`` on every host ``pattern`` names; each host's outcome, in inventory order."""
    inventory = inventory or inventory_.default_inventory()
    check_request(request)
    hosts = inventory_.hosts_matching(pattern, inventory)
    outcomes = [HostOutcome(h) for h in hosts]
    _gather_and_plan(stage, outcomes, inventory, request.forks)
    ui.planned(outcomes)
    planned = [o for o in outcomes if o.pending]
    if not planned:
        return StageRun(outcomes)

    if request.yes and not request.check and all(stage.has_work(o.plan) for o in planned):
        # Confirmed in advance, with work on every host: the run's own diffs are the preview.
        # A check-mode pass first would walk each host twice.
        to_apply = planned
    else:
        preview = _playbook(stage, planned, inventory, request, check=True)
        ui.changes(preview, "would change" if request.check else "will change")
        to_apply = []
        for outcome in planned:
            ran = preview.host(outcome.host)
            if ran.outcome in (events.FAILED, events.UNREACHABLE):
                _settle_failed(outcome, ran, stage, "checking")
            elif not ran.changes:
                try:
                    outcome.settle(NOTHING_TO_DO, EXIT_OK, stage.unchanged(outcome.host,
                                                                           outcome.plan))
                except GpuprovError as error:
                    outcome.settle_error(error)
            else:
                to_apply.append(outcome)
        if request.check or not to_apply:
            for outcome in to_apply:
                outcome.settle(WOULD_CHANGE, EXIT_OK, f"{len(preview.host(outcome.host).changes)}"
                               " changes previewed; --check changed nothing")
            return StageRun(outcomes)
        ui.confirm([o.host for o in to_apply])

    order = [o.host for o in outcomes]
    refused = {o.host for o in outcomes if o.status == REFUSED}
    runs, stopped = hosts_before_stop(order, {o.host for o in to_apply}, refused,
                                      request.serial, request.max_fail)
    for outcome in to_apply:
        if outcome.host in stopped:
            outcome.settle(NOT_RUN, EXIT_FAILED, "not started: the run stopped at a refused "
                           "host (--max-fail)")
    to_apply = [o for o in to_apply if o.host in runs]
    if to_apply:
        _apply(stage, to_apply, inventory, request, ui)
        _verify(stage, [o for o in to_apply if o.pending], inventory, request.forks)
    return StageRun(outcomes)


def check_request(request: Request) -> None:
    """Bad --serial, --max-fail or --forks values fail before anything is read."""
    if request.serial is not None:
        value = request.serial[:-1] if request.serial.endswith("%") else request.serial
        if not value.isdigit() or int(value) < 1 or (request.serial.endswith("%")
                                                     and int(value) > 100):
            raise UsageError(f"--serial {request.serial!r} is not a batch size",
                             "give a number of hosts (--serial 1) or a percentage of them "
                             "(--serial 25%)")
    if request.max_fail is not None and not 0 <= request.max_fail <= 100:
        raise UsageError(f"--max-fail {request.max_fail} is not a percentage",
                         "give 0 to 100: the share of a batch's hosts that may fail before the "
                         "run stops (0: stop at the first failure)")
    if request.forks < 1:
        raise UsageError(f"--forks {request.forks} must be at least 1")


def batch_size(serial: str | None, hosts: int) -> int:
    """Ansible's batch size for ``serial`` over ``hosts`` hosts ("25%" rounds down, to 1 at
    least; None, every host at once)."""
    if serial is None:
        return max(hosts, 1)
    if serial.endswith("%"):
        return max(math.floor(hosts * int(serial[:-1]) / 100), 1)
    return int(serial)


def hosts_before_stop(order: Sequence[str], applying: set[str], refused: set[str],
                      serial: str | None, max_fail: int | None) -> tuple[list[str], list[str]]:
    """Which of ``applying`` run, and which not, when refused hosts count as failed ones.

    Refused hosts never reach Ansible (Ansible would stop a play at a batch that failed whole,
    so one refused host in ``--serial 1`` would stop the others). With ``--max-fail``, a
    batch whose refused hosts already exceed it is the run's last one, as it would be had
    Ansible seen them fail. Batches are Ansible's, over the hosts in inventory order."""
    members = [h for h in order if h in applying or h in refused]
    size = batch_size(serial, len(members))
    runs: list[str] = []
    for start in range(0, len(members), size):
        batch = members[start:start + size]
        runs += [h for h in batch if h in applying]
        failed = sum(h in refused for h in batch)
        if max_fail is not None and failed and failed * 100 / len(batch) > max_fail:
            stopped = [h for h in members[start + size:] if h in applying]
            return runs, stopped
    return runs, []


def in_parallel(work: Callable[[Any], Any], items: Sequence[Any], bound: int) -> list[Any]:
    """``work`` on every item, at most ``bound`` at once (each is one SSH session's wait);
    the results in the items' order."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(bound, len(items)))) as pool:
        return list(pool.map(work, items))


def _gather_and_plan(stage: Stage, outcomes: list[HostOutcome], inventory: Path,
                     forks: int) -> None:
    def gather(outcome: HostOutcome) -> None:
        try:
            outcome.gathered = stage.gather(outcome.host, inventory)
            outcome.plan = stage.plan(outcome.host, outcome.gathered)
        except GpuprovError as error:
            outcome.settle_error(error)

    in_parallel(gather, outcomes, forks)


def _playbook(stage: Stage, outcomes: Sequence[HostOutcome], inventory: Path,
              request: Request, *, check: bool, report: Report | None = None) -> PlaybookResult:
    hosts = ",".join(o.host for o in outcomes)
    extravars: dict[str, Any] = {
        "gpuprov_target": hosts,
        "gpuprov_plans": {o.host: stage.host_vars(o.plan) for o in outcomes},
    }
    if not check:
        if request.serial is not None:
            extravars["gpuprov_serial"] = request.serial
        if request.max_fail is not None:
            extravars["gpuprov_max_fail_percentage"] = request.max_fail
    return run_playbook(stage.playbook, inventory=inventory, limit=hosts, extravars=extravars,
                        check=check, report=report, forks=request.forks)


def _apply(stage: Stage, outcomes: list[HostOutcome], inventory: Path, request: Request,
           ui: Ui) -> None:
    with ui.progress() as report:
        try:
            result = _playbook(stage, outcomes, inventory, request, check=False, report=report)
        except RunInterrupted as interrupted:
            for outcome in outcomes:
                ran = interrupted.result.host(outcome.host)
                outcome.changes, outcome.rebooted = ran.changes, ran.rebooted
                outcome.settle(INTERRUPTED, Interrupted.exit_code, _left_in(ran),
                               f"run the same command again to finish {outcome.host}; a "
                               "second run only does what is missing")
            raise Interrupted(outcomes) from None
    ui.changes(result, "changed")
    for outcome in outcomes:
        ran = result.host(outcome.host)
        outcome.changes, outcome.rebooted = ran.changes, ran.rebooted
        if ran.outcome in (events.FAILED, events.UNREACHABLE):
            _settle_failed(outcome, ran, stage, "applying")
        elif not ran.failures and ran.last_task is None:
            # No task started: Ansible stopped the play (--max-fail) before its batch.
            outcome.settle(NOT_RUN, EXIT_FAILED, "not started: the run stopped after "
                           "failures in an earlier batch (--max-fail, or --serial with a "
                           "batch that failed whole)")


def _settle_failed(outcome: HostOutcome, ran: events.HostRun, stage: Stage, doing: str) -> None:
    playbook = stage.playbook
    if ran.locked_by is not None and not ran.changes:
        outcome.settle(REFUSED, EXIT_REFUSED, ran.locked_by,
                       f"wait for that run to end, then run this again (gpuprov host inspect "
                       f"{outcome.host} shows the state it left)")
        return
    hint = (f"rerun it by hand to see every task: ANSIBLE_CONFIG={CONTENT / 'ansible.cfg'} "
            f"ansible-playbook -i INVENTORY {CONTENT / 'playbooks' / playbook} --limit "
            f"{outcome.host} -e @VARS -vv")
    if ran.unreachable is not None:
        state = ("nothing was changed" if not ran.changes else
                 f"it was part-way through: {len(ran.changes)} changes made, last task "
                 f"{ran.last_task!r}")
        outcome.settle(UNREACHABLE, EXIT_UNREACHABLE,
                       f"lost contact with {outcome.host} while {doing} the changes: "
                       f"{ran.unreachable}; {state}",
                       f"when it answers again, check it with: gpuprov host inspect "
                       f"{outcome.host}, then run this again")
        return
    message = (f"playbooks/{playbook} failed on {outcome.host} while {doing} the changes:\n  "
               + "\n  ".join(ran.failures))
    if not ran.changes and doing == "applying":
        message += f"\n  nothing was changed on {outcome.host}"
        extra = stage.failed_unchanged_hint(outcome.host)
        hint = f"{hint}; {extra}" if extra else hint
    outcome.settle(FAILED, EXIT_FAILED, message, hint)


def _left_in(ran: events.HostRun) -> str:
    if not ran.changes:
        return "nothing was changed"
    done = f"{len(ran.changes)} changes made ({', '.join(c.task for c in ran.changes)})"
    return done + (", rebooted" if ran.rebooted else ", not rebooted")


def _verify(stage: Stage, outcomes: list[HostOutcome], inventory: Path, forks: int) -> None:
    def verify(outcome: HostOutcome) -> None:
        try:
            outcome.verified = stage.verify(outcome.host, inventory, outcome.plan)
        except GpuprovError as error:
            outcome.settle_error(error, FAILED)
            return
        outcome.settle(DONE, EXIT_OK, f"{len(outcome.changes)} changes, "
                       + ("one reboot" if outcome.rebooted else "no reboot"))

    in_parallel(verify, outcomes, forks)


class Interrupted(GpuprovError):
    """Ctrl-C stopped the run while it applied; ``outcomes`` say how far each host got."""

    exit_code = 130

    def __init__(self, outcomes: Sequence[HostOutcome]) -> None:
        states = "; ".join(f"{o.host}: {o.message}" for o in outcomes)
        super().__init__(f"interrupted while applying: {states}",
                         outcomes[0].hint if len(outcomes) == 1 else
                         "run the same command again to finish; a second run only does what "
                         "is missing")
        self.outcomes = list(outcomes)
