"""``gpuprov lab``: virtual GPU hosts under QEMU, to rehearse every stage before real hardware."""

from __future__ import annotations

import json
import subprocess
from typing import Annotated

import typer
from rich.table import Table

from gpuprov.cli.output import console, err_console, progress
from gpuprov.lab.spec import BOOT_CHOICES, GROUP_MATE_CHOICES, IOMMU_CHOICES, validate_names

app = typer.Typer(
    help="Virtual GPU hosts (QEMU q35 + OVMF + vIOMMU + stand-in GPUs) to rehearse on.",
    no_args_is_help=True,
)

Names = Annotated[list[str], typer.Argument(help="Lab host names.", show_default=False)]


def _lab():
    from gpuprov.lab.hosts import Lab  # keeps --help fast

    return Lab()


def _choice(value: str | None, choices: tuple[str, ...], flag: str) -> str | None:
    if value is not None and value not in choices:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}", param_hint=flag)
    return value


@app.command()
def up(
    names: Annotated[list[str] | None, typer.Argument(help="Lab host names.")] = None,
    iommu: Annotated[str | None, typer.Option(
        help=f"Virtual IOMMU: {' or '.join(IOMMU_CHOICES)} [default: intel]")] = None,
    boot: Annotated[str | None, typer.Option(
        help=f"Boot loader: {' or '.join(BOOT_CHOICES)} [default: grub]")] = None,
    gpus: Annotated[int | None, typer.Option(help="Stand-in GPUs per host [default: 1]")] = None,
    memory: Annotated[int | None, typer.Option(
        help="Memory per host in MiB [default: 1024]")] = None,
    cpus: Annotated[int | None, typer.Option(help="Virtual CPUs per host [default: 2]")] = None,
    group_mate: Annotated[str | None, typer.Option(
        help="Put another device in the first GPU's IOMMU group, to rehearse refusals: "
             f"{', '.join(GROUP_MATE_CHOICES)} (usb: an unrelated controller; disk: the root "
             "disk's controller; nic: the management NIC) [default: none]")] = None,
    ssh_port: Annotated[int | None, typer.Option(
        help="Loopback SSH port of the first new host (the next hosts take the next ports) "
             "[default: the first free port from 2222]")] = None,
) -> None:
    """Build the image if needed, boot hosts in parallel, return when SSH answers on all."""
    names = validate_names(names or ["lab1"])
    lab = _lab()
    with progress() as report:
        lab.up(names, report=report, ssh_port=ssh_port,
               iommu=_choice(iommu, IOMMU_CHOICES, "--iommu"),
               boot=_choice(boot, BOOT_CHOICES, "--boot"),
               gpus=gpus, memory_mib=memory, cpus=cpus,
               group_mate=_choice(group_mate, GROUP_MATE_CHOICES, "--group-mate"))
    _print_table(lab, names)
    err_console.print(f"inventory: {lab.inventory_file}", highlight=False)


@app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """Show every lab host and whether it runs."""
    lab = _lab()
    if as_json:
        console.print_json(json.dumps([lab.status(name) for name in lab.names()]))
        return
    if not lab.names():
        err_console.print("no lab hosts; create one with: gpuprov lab up")
        return
    _print_table(lab, lab.names())


@app.command(context_settings={"ignore_unknown_options": True})
def ssh(
    name: Annotated[str, typer.Argument(help="Lab host name.")],
    command: Annotated[list[str] | None, typer.Argument(
        help="Command to run (after --); without one, an interactive shell.")] = None,
) -> None:
    """Log in to a lab host as root, or run COMMAND there and exit with its status."""
    argv = _lab().ssh_argv(name, command or [])
    raise typer.Exit(subprocess.run(argv, check=False).returncode)


@app.command()
def down(names: Names) -> None:
    """Shut hosts down cleanly (ACPI power button); their disks are kept."""
    lab = _lab()
    for name in validate_names(names):
        stopped = lab.down(name)
        err_console.print(f"{name}: {'stopped' if stopped else 'was not running'}")


@app.command()
def destroy(
    names: Annotated[list[str] | None, typer.Argument(help="Lab host names.")] = None,
    all_hosts: Annotated[bool, typer.Option("--all", help="Destroy every lab host.")] = False,
) -> None:
    """Stop hosts at once and delete their disks, logs and inventory entries."""
    lab = _lab()
    if all_hosts == bool(names):
        raise typer.BadParameter("name the hosts to destroy, or pass --all (not both)")
    targets = lab.names() if all_hosts else validate_names(names or [])
    for name in targets:
        lab.spec(name)  # refuse unknown names before destroying any
    for name in targets:
        lab.destroy(name)
        err_console.print(f"{name}: destroyed")


@app.command()
def inventory() -> None:
    """Print the path of the lab's Ansible inventory (for ansible-playbook -i)."""
    lab = _lab()
    lab.write_inventory()
    console.print(str(lab.inventory_file), highlight=False)


def _print_table(lab, names: list[str]) -> None:
    table = Table("name", "state", "ssh", "iommu", "boot", "gpus", "console log")
    for name in names:
        s = lab.status(name)
        table.add_row(name, s["state"], s["ssh"], s["iommu"], s["boot"], str(s["gpus"]),
                      s["console_log"])
    console.print(table)
