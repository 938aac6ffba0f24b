"""Where the CLI writes: results on stdout, progress and errors on stderr."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Piped output (CI logs, `| less`) keeps whole paths instead of rich's 80-column default.
    # No emoji codes: a certificate fingerprint's ":CD:" would print as a CD emoji.
    return Console(stderr=stderr, width=None if stream.isatty() else 200, emoji=False)


console = _console()
err_console = _console(stderr=True)


def print_json(data: object) -> None:
    """``data`` as JSON on stdout: coloured on a terminal, plain where a program reads it.
    rich's highlighting is slow on big documents: 1.3 s for a 32-host `host inspect --json`."""
    if console.is_terminal:
        console.print_json(json.dumps(data))
    else:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def print_error(message: str, hint: str | None = None) -> None:
    """An error and what to do about it, on stderr. What went wrong quotes hosts, files and
    APIs ("[datastore1] ..."): never markup."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    if hint:
        err_console.print(f"[bold]hint:[/] {escape(hint)}", highlight=False)


@contextmanager
def progress() -> Iterator:
    """A ``report(subject, message)`` callback: live spinners on a terminal, lines otherwise."""
    if not err_console.is_terminal:
        started = time.monotonic()

        def report_line(subject: str, message: str) -> None:
            # Messages carry names from hosts and APIs ("[datastore1] iso/x.iso"): not markup.
            err_console.print(f"[{time.monotonic() - started:6.1f}s] {escape(subject)}: "
                              f"{escape(message)}", highlight=False, soft_wrap=True)

        yield report_line
        return
    tasks: dict[str, int] = {}
    columns = (SpinnerColumn(), TextColumn("{task.fields[subject]}", style="bold", markup=False),
               TextColumn("{task.description}", markup=False), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=False) as bar:

        def report_live(subject: str, message: str) -> None:
            if subject not in tasks:
                tasks[subject] = bar.add_task(message, subject=subject, total=None)
            done = message.startswith(("up", "ready", "already", "failed"))
            bar.update(tasks[subject], description=message,
                       **({"total": 1, "completed": 1} if done else {}))

        yield report_live
