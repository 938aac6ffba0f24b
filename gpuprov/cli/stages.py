"""How every stage's run looks on the command line: its shared options, the preview and
confirmation, progress, and the outcome per host. The flow itself is ``gpuprov.stages.engine``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Annotated

import typer
from rich.markup import escape
from rich.prompt import Confirm
from rich.syntax import Syntax
from rich.table import Table

from gpuprov.cli.output import console, err_console, print_error, print_json, progress
from gpuprov.errors import NotConfirmed
from gpuprov.stages import engine
from gpuprov.transport.events import PlaybookResult

CheckOption = Annotated[bool, typer.Option(
    "--check", help="Show exactly what would change (with diffs); change nothing.")]
SerialOption = Annotated[str | None, typer.Option(
    "--serial", help="Apply in batches of this many hosts, or this share of them (25%); "
    "Ansible's serial. A batch that fails whole stops the run.", show_default=False)]
MaxFailOption = Annotated[int | None, typer.Option(
    "--max-fail", help="Stop the run when more than this percentage of a batch's hosts fail "
    "or are refused (Ansible's max_fail_percentage; 0: at the first one) \\[default: the "
    "others go on]", show_default=False)]
ForksOption = Annotated[int, typer.Option(
    "--forks", help="Hosts inspected, changed and verified at once.")]
JsonOption = Annotated[bool, typer.Option(
    "--json", help="The outcome per host as one JSON document on stdout (needs --yes or "
                   "--check).")]

STATUS_STYLE = {engine.DONE: "green", engine.NOTHING_TO_DO: "green",
                engine.WOULD_CHANGE: "yellow", engine.REFUSED: "red", engine.FAILED: "red",
                engine.UNREACHABLE: "red", engine.NOT_RUN: "yellow",
                engine.INTERRUPTED: "red"}


class StageUi:
    """``engine.Ui`` for a terminal or a log: plan, diffs and the question on stdout/stderr."""

    def __init__(self, *, question: Callable[[Sequence[str]], str], yes: bool, as_json: bool,
                 render_plan: Callable[[engine.HostOutcome], None]) -> None:
        self.question = question
        self.yes = yes
        self.as_json = as_json  # stdout is the JSON document alone
        self.render_plan = render_plan

    def planned(self, outcomes: Sequence[engine.HostOutcome]) -> None:
        if not self.as_json:
            for outcome in outcomes:
                if outcome.plan is not None:
                    self.render_plan(outcome)

    def changes(self, result: PlaybookResult, heading: str) -> None:
        # After a run, its changes are news only if there are any; a preview says "nothing".
        if not self.as_json and (result.changes or heading != "changed"):
            render_changes(result, heading)

    def confirm(self, hosts: Sequence[str]) -> None:
        if self.yes:
            return
        if not sys.stdin.isatty():
            raise NotConfirmed("not confirmed: standard input is not a terminal",
                               "review the plan above (or run with --check), then pass --yes")
        if not Confirm.ask(self.question(hosts), console=err_console, default=False):
            raise typer.Abort()

    def progress(self):
        return progress()


def check_json(as_json: bool, yes: bool, check: bool) -> None:
    if as_json and not (yes or check):
        raise NotConfirmed("--json cannot ask for confirmation",
                           "add --yes to apply, or --check to preview")


def render_changes(result: PlaybookResult, heading: str) -> None:
    several = len(result.hosts) > 1
    if not result.changes:
        if not several:
            console.print(f"{heading}: nothing")
        return
    console.print(f"[bold]{heading}:[/]")
    for change in result.changes:
        where = f"{escape(change.host)}: " if several else ""
        console.print(f"  [yellow]~[/] {where}{escape(change.task)}", highlight=False)
        for diff in change.diffs:
            console.print(Syntax(diff.rstrip("\n"), "diff", theme="ansi_dark",
                                 background_color="default"), highlight=False)


def finish(run: engine.StageRun, *, as_json: bool,
           render_done: Callable[[engine.HostOutcome], None]) -> None:
    """Each host's outcome (and one table over several hosts), then exit with the worst."""
    if as_json:
        print_json(run.to_json())
        raise typer.Exit(run.exit_code)
    several = len(run.outcomes) > 1
    for outcome in run.outcomes:
        prefix = f"{outcome.host}: " if several else ""
        if outcome.status == engine.DONE:
            render_done(outcome)
        elif outcome.status == engine.NOTHING_TO_DO:
            console.print(f"[green]nothing to do:[/] {prefix}{escape(outcome.message)}",
                          highlight=False)
        elif outcome.status == engine.WOULD_CHANGE:
            console.print(f"--check: nothing was changed{' on ' + outcome.host if several else ''}",
                          highlight=False)
        else:
            print_error(prefix + outcome.message, outcome.hint)
    if several:
        table = Table("host", "outcome", "exit", "changes", "reboot", "detail",
                      title="outcome per host", title_justify="left")
        for outcome in run.outcomes:
            style = STATUS_STYLE.get(outcome.status, "")
            table.add_row(escape(outcome.host), f"[{style}]{outcome.status}[/]",
                          str(outcome.exit_code), str(len(outcome.changes)),
                          "yes" if outcome.rebooted else "no",
                          escape(outcome.message.splitlines()[0] if outcome.message else ""))
        console.print(table)
    raise typer.Exit(run.exit_code)
