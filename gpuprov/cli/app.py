"""The ``gpuprov`` command: one group per stage, and the single place errors are printed."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from gpuprov import __version__
from gpuprov.cli import driver, guest, host, lab, vm
from gpuprov.cli.output import err_console, print_error
from gpuprov.errors import GpuprovError, HostUnreachable

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
app.add_typer(guest.app, name="guest")
app.add_typer(driver.app, name="driver")

# Stages that later issues build. They exist so the CLI's shape is visible, and say plainly
# that they do nothing yet rather than print anything that looks like a result.
_PENDING = {
    "deploy": ("Deploy the GPU remoting server and the Kubernetes device plugin.", None),
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


@app.command()
def playbooks() -> None:
    """Print the directory of gpuprov's playbooks (its roles and ansible.cfg are beside it), to
    run them with plain ansible-playbook, AWX or a fleet's own tooling."""
    from gpuprov.transport.ansible import CONTENT, playbook_environment

    settings = "".join(f"{name}={value} " for name, value in playbook_environment().items())
    typer.echo(CONTENT / "playbooks")
    err_console.print(
        f"run one as gpuprov does:\n  {settings}ansible-playbook "
        f"-i INVENTORY {CONTENT / 'playbooks' / 'host_setup.yml'} --limit HOST "
        "-e '{\"vfio_pci_addresses\": [\"0000:26:00.0\", \"0000:26:00.1\"]}'\n"
        "each playbook's first lines say what it does and which variables it takes",
        highlight=False, markup=False)


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
        print_error(error.message, error.hint)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as error:  # the one place a fault nobody decided becomes an exit code
        decided = library_fault(error)
        print_error(decided.message, decided.hint)
        if os.environ.get("GPUPROV_DEBUG") == "1":
            err_console.print_exception()
        sys.exit(decided.exit_code)


def library_fault(error: Exception) -> GpuprovError:
    """A fault raised by a library, not decided by gpuprov, as a message and an exit code.

    Each such fault is a gap in gpuprov's own checks; this keeps it from ending in a
    traceback, and says how to get one for a report."""
    module = type(error).__module__ or ""
    report = ("this is a gap in gpuprov's checks; rerun with GPUPROV_DEBUG=1 for the "
              "traceback and report it")
    if module.startswith(("pyVmomi", "vmodl")):
        text = getattr(error, "msg", None) or str(error)
        return GpuprovError(f"vSphere refused the request: {type(error).__name__}: {text}",
                            report)
    if module.startswith(("requests", "urllib3")):
        return HostUnreachable(f"an API did not answer as expected: {type(error).__name__}: "
                               f"{error}", "check the address and that the API is up; " + report)
    if module.startswith("ansible"):
        return GpuprovError(f"Ansible failed: {error}", report)
    if isinstance(error, OSError):
        return GpuprovError(f"{type(error).__name__}: {error}", report)
    return GpuprovError(f"internal error: {type(error).__name__}: {error}", report)
