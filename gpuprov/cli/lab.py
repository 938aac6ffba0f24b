"""``gpuprov lab``: virtual GPU hosts under QEMU, to rehearse every stage before real hardware."""

from __future__ import annotations

import subprocess
from typing import Annotated

import typer
from rich.table import Table

from gpuprov.cli.output import console, err_console, print_json, progress
from gpuprov.lab.spec import BOOT_CHOICES, GROUP_MATE_CHOICES, IOMMU_CHOICES, validate_names

app = typer.Typer(
    help="Virtual GPU hosts (QEMU q35 + OVMF + vIOMMU + stand-in GPUs) to rehearse on.",
    no_args_is_help=True,
)

Names = Annotated[list[str], typer.Argument(help="Lab host names.", show_default=False)]


def _lab():
    from gpuprov.lab.hosts import Lab  # keeps --help fast

    return Lab()


def _stage_names() -> list[str]:
    return ["host-setup"]  # gpuprov.stages.snapshots.STAGES, named here to keep --help fast


def _choice(value: str | None, choices: tuple[str, ...], flag: str) -> str | None:
    if value is not None and value not in choices:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}", param_hint=flag)
    return value


@app.command()
def up(
    names: Annotated[list[str] | None, typer.Argument(help="Lab host names.")] = None,
    iommu: Annotated[str | None, typer.Option(
        help=f"Virtual IOMMU: {' or '.join(IOMMU_CHOICES)} \\[default: intel]")] = None,
    boot: Annotated[str | None, typer.Option(
        help=f"Boot loader: {' or '.join(BOOT_CHOICES)} \\[default: grub]")] = None,
    gpus: Annotated[int | None, typer.Option(help="Stand-in GPUs per host \\[default: 1]")] = None,
    memory: Annotated[int | None, typer.Option(
        help="Memory per host in MiB \\[default: 1024]")] = None,
    cpus: Annotated[int | None, typer.Option(help="Virtual CPUs per host \\[default: 2]")] = None,
    group_mate: Annotated[str | None, typer.Option(
        help="Put another device in the first GPU's IOMMU group, to rehearse refusals: "
             f"{', '.join(GROUP_MATE_CHOICES)} (usb: an unrelated controller; disk: the root "
             "disk's controller; nic: the management NIC) \\[default: none]")] = None,
    ssh_port: Annotated[int | None, typer.Option(
        help="Loopback SSH port of the first new host (the next hosts take the next ports) "
             "\\[default: the first free port from 2222]")] = None,
    cold: Annotated[bool, typer.Option(
        "--cold",
        help="Boot from scratch: resume no checkpoint and store none "
             "[env: GPUPROV_LAB_COLD=1]")] = False,
    after: Annotated[str | None, typer.Option(
        "--after", metavar="STAGE",
        help="Start from the cached result of running STAGE on this kind of host "
             f"({', '.join(_stage_names())}); on a miss the stage runs for real, is verified "
             "and cached")] = None,
) -> None:
    """Build the image if needed, start hosts in parallel, return when SSH answers on all.

    A new host resumes the cached checkpoint of its kind (image, IOMMU, boot loader, GPUs,
    group mate, memory, CPUs) in seconds; the first of its kind boots and is checkpointed."""
    names = validate_names(names or ["lab1"])
    stage = None
    if after is not None:
        from gpuprov.stages.snapshots import STAGES

        stage = STAGES.get(after)
        if stage is None:
            raise typer.BadParameter(f"{after!r} is not one of {', '.join(STAGES)}",
                                     param_hint="--after")
    lab = _lab()
    with progress() as report:
        lab.up(names, report=report, ssh_port=ssh_port, cold=cold, after=stage,
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
        print_json([lab.status(name) for name in lab.names()])
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


@app.command()
def cache(
    prune: Annotated[bool, typer.Option("--prune", help="Remove every checkpoint.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """List the cached checkpoints (booted hosts and stage results) and their sizes."""
    checkpoints = _lab().checkpoints
    if prune:
        count, freed = checkpoints.prune()
        err_console.print(f"removed {count} checkpoint(s), {freed / 2**20:.0f} MiB freed")
        return
    entries = checkpoints.entries()
    if as_json:
        print_json([{
            "key": e.key, "kind": e.meta.get("kind"), "spec": e.meta.get("spec"),
            "bytes": e.size, "last_used": e.last_used, "dir": str(e.dir)} for e in entries])
        return
    if not entries:
        err_console.print(f"no checkpoints in {checkpoints.root}: the next lab up of each host "
                          "shape boots, then stores one")
        return
    table = Table("key", "kind", "host shape", "size", "last used",
                  title=f"{checkpoints.root} (cap {checkpoints.cap / 2**30:.0f} GiB)",
                  title_justify="left")
    for e in entries:
        spec = e.meta.get("spec", {})
        shape = ", ".join(f"{k}={spec[k]}" for k in ("iommu", "boot", "gpus", "group_mate",
                                                      "memory_mib", "cpus") if k in spec)
        table.add_row(e.key, e.meta.get("kind", "?"), shape, f"{e.size / 2**20:.0f} MiB",
                      _ago(e.last_used))
    console.print(table)
    total = sum(e.size for e in entries)
    err_console.print(f"{len(entries)} checkpoint(s), {total / 2**20:.0f} MiB")


def _ago(when: float) -> str:
    import time

    seconds = max(time.time() - when, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _print_table(lab, names: list[str]) -> None:
    table = Table("name", "state", "ssh", "iommu", "boot", "gpus", "console log")
    for name in names:
        s = lab.status(name)
        table.add_row(name, s["state"], s["ssh"], s["iommu"], s["boot"], str(s["gpus"]),
                      s["console_log"])
    console.print(table)
