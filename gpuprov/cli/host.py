"""``gpuprov host``: inspect a host's IOMMU, boot loader and GPUs (setup follows in issue #3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gpuprov.cli.output import console, err_console

app = typer.Typer(
    help="Inspect a host and prepare it: IOMMU on, the GPU bound to vfio-pci.",
    no_args_is_help=True,
)

InventoryOption = Annotated[Path | None, typer.Option(
    "--inventory", "-i", envvar="GPUPROV_INVENTORY", show_default=False,
    help="Ansible inventory naming the host [default: the lab's inventory]")]


@app.command(epilog=(
    "Exit codes: 0 every GPU (or every one named) is ready; 10 some need setup; 20 some are "
    "unsafe to pass through; 3 no GPU found, or the named device is not there; 2 bad input; "
    "4 the host did not answer over SSH; 1 the probe failed."
))
def inspect(
    host: Annotated[str, typer.Argument(help="Inventory host name.")],
    inventory: InventoryOption = None,
    gpu: Annotated[list[str] | None, typer.Option(
        "--gpu", help="Only this GPU (26:00, 26:00.0 or 0000:26:00.0); repeatable.",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """Report the IOMMU, boot loader, kernel command line and every GPU, with a verdict per GPU:
    ready, needs setup (and what), or unsafe (why, and the fix). Changes nothing."""
    from gpuprov.stages import inspect as stage  # keeps --help fast

    result = stage.run(host, inventory=inventory, gpus=gpu or [])
    if as_json:
        console.print_json(json.dumps(result.to_json()))
    else:
        _render(result)
    raise typer.Exit(result.exit_code)


def _yes_no(value: bool | None, yes: str = "yes", no: str = "no") -> str:
    return {True: f"[green]{yes}[/]", False: f"[red]{no}[/]", None: "unknown"}[value]


def _render(result) -> None:
    facts = result.facts
    summary = Table(title=f"{result.host} ({result.address})", show_header=False,
                    title_justify="left")
    summary.add_column(style="bold")
    summary.add_column(overflow="fold")
    vendor = {"intel": "Intel", "amd": "AMD"}.get(facts.cpu_vendor, facts.cpu_vendor)
    table_name = {"intel": "DMAR", "amd": "IVRS"}.get(facts.cpu_vendor, "DMAR/IVRS")
    summary.add_row("CPU", vendor)
    summary.add_row("kernel", facts.kernel)
    summary.add_row("firmware", f"{facts.firmware}, secure boot "
                    + {True: "on", False: "off", None: "unknown"}[facts.secure_boot])
    summary.add_row("IOMMU in firmware", _yes_no(facts.iommu_in_firmware) + f" ({table_name})")
    groups = len(facts.iommu_groups)
    summary.add_row("IOMMU active", _yes_no(facts.iommu_active)
                    + (f" ({groups} groups, {', '.join(facts.iommu_units)})" if groups else ""))
    summary.add_row("interrupt remapping", _yes_no(facts.interrupt_remapping))
    summary.add_row("iommu=pt", "yes" if facts.passthrough_mode else "no")
    if facts.cpu_vendor == "intel":
        summary.add_row("Intel IOMMU on by default",
                        _yes_no(facts.kernel_enables_intel_iommu_by_default))
    loader = facts.bootloader
    summary.add_row("boot loader", f"[bold]{loader}[/]")
    summary.add_row("  signals (* decided)", "\n".join(
        f"{'*' if s.decisive else ' '} {s.name}: {s.value}" for s in loader.signals))
    summary.add_row("cmdline (running)", str(facts.cmdline))
    configured = facts.configured_cmdline
    summary.add_row(f"cmdline ({configured.source or 'configured'})",
                    str(configured.cmdline) if configured.cmdline is not None else "none")
    params = result.kernel_params
    changes = [*(f"add {p}" for p in params.add), *(f"remove {p}" for p in params.remove)]
    summary.add_row("cmdline needs", ", ".join(changes) or "nothing")
    summary.add_row("  because", "\n".join(params.reasons))
    summary.add_row("root disk", _located(facts, facts.root_disks))
    summary.add_row("management NIC", _located(facts, facts.mgmt_nics))
    summary.add_row("vfio modules", ", ".join(f"{k} {v}" for k, v in facts.vfio_modules.items()))
    summary.add_row("/dev/vfio", ", ".join(facts.dev_vfio) or "absent")
    console.print(summary)

    for verdict in result.verdicts:
        _render_gpu(facts, verdict)
    if not result.verdicts:
        err_console.print(f"no GPU (display-class PCI device) on {result.host}")
    for note in facts.notes:
        err_console.print(f"note: {note}", highlight=False)


def _located(facts, paths) -> str:
    if not paths:
        return "unknown"
    lines = []
    for path in paths:
        device = facts.device(path.controller) if path.controller else None
        group = f", IOMMU group {device.iommu_group}" if device and device.iommu_group is not None \
            else ""
        lines.append(f"{path.name} on {path.controller or 'no PCI device'}{group}")
    return "\n".join(lines)


def _render_gpu(facts, verdict) -> None:
    gpu = verdict.gpu
    colour = {"ready": "green", "needs setup": "yellow", "unsafe": "red"}[verdict.status]
    table = Table("function", "ids", "device", "driver", "group", "boot VGA",
                  title=f"GPU {gpu.slot}: [{colour}]{verdict.status}[/]", title_justify="left")
    for f in gpu.functions:
        table.add_row(f.address, f.vendor_device, f.description, f.driver or "none",
                      "-" if f.iommu_group is None else str(f.iommu_group),
                      {True: "yes", False: "no", None: "-"}[f.boot_vga])
    console.print(table)
    mates = ", ".join(f"{d.address} ({d.description or d.class_code})"
                      for d in verdict.group_mates) or "nothing else"
    console.print(f"  group mates: {mates}", highlight=False)
    for refusal in verdict.refusals:
        console.print(f"  [red]unsafe:[/] {refusal.reason}", highlight=False)
        console.print(f"    fix: {refusal.fix}", highlight=False)
    for item in verdict.missing:
        console.print(f"  [yellow]missing:[/] {item}", highlight=False)
    for warning in verdict.warnings:
        console.print(f"  [yellow]warning:[/] {warning.reason}", highlight=False)
        console.print(f"    {warning.fix}", highlight=False)
