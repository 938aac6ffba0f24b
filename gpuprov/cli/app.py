"""The ``gpuprov`` command: one group per stage, and the single place errors are printed."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from gpuprov import __version__
from gpuprov.cli import host, lab, vm
from gpuprov.cli.output import err_console
from gpuprov.errors import GpuprovError

app = typer.Typer(
    name="gpuprov",
    help="Take bare GPU servers to schedulable, shareable GPU capacity.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(lab.app, name="lab")
app.add_typer(host.app, name="host")
app.add_typer(vm.app, name="vm")

# Stages that later issues build. They exist so the CLI's shape is visible, and say plainly
# that they do nothing yet rather than print anything that looks like a result.
_PENDING = {
    "guest": ("Install the NVIDIA driver, container toolkit and fabricmanager in a guest.", None),
    "deploy": ("Deploy the GPU remoting server and the Kubernetes device plugin.", None),
    "driver": ("Day 2: plan and roll out driver upgrades.", None),
}


def _pending_group(name: str, summary: str, issue: int | None) -> None:
    tracked = f"issue #{issue}" if issue else "a later issue"

    @app.command(
        name,
        help=f"{summary} (not yet available: {tracked})",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )
    def pending(ctx: typer.Context) -> None:
        raise GpuprovError(f"`gpuprov {name}` is not yet available", f"it is tracked in {tracked}")


for _name, (_summary, _issue) in _PENDING.items():
    _pending_group(_name, _summary, _issue)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gpuprov {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Take bare GPU servers to schedulable, shareable GPU capacity."""


def main() -> None:
    try:
        app()
    except GpuprovError as error:
        # What went wrong quotes hosts, files and APIs ("[datastore1] ..."): never markup.
        err_console.print(f"[bold red]error:[/] {escape(error.message)}", highlight=False)
        if error.hint:
            err_console.print(f"[bold]hint:[/] {escape(error.hint)}", highlight=False)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
