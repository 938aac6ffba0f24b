"""``gpuprov host``: inspect a host, set it up for passthrough (IOMMU + vfio-pci), roll back."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.prompt import Confirm
from rich.syntax import Syntax
from rich.table import Table

from gpuprov.cli.output import console, err_console, progress
from gpuprov.errors import GpuprovError, UsageError

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


YesOption = Annotated[bool, typer.Option(
    "--yes", "-y", help="Go ahead without asking, and accept that the card is the host's "
    "console (boot VGA).")]
CheckOption = Annotated[bool, typer.Option(
    "--check", help="Show exactly what would change (with diffs); change nothing.")]


@app.command(epilog=(
    "Exit codes: 0 done (or nothing to do, or --check); 20 refused as unsafe (nothing changed); "
    "2 bad input or not confirmed; 3 no such host or GPU; 4 the host did not answer; 1 the "
    "playbook or the verification failed."
))
def setup(
    host: Annotated[str, typer.Argument(help="Inventory host name.")],
    inventory: InventoryOption = None,
    gpu: Annotated[list[str] | None, typer.Option(
        "--gpu", help="The card to give to vfio-pci (26:00, 26:00.0 or 0000:26:00.0); "
        "repeatable; needed when the host has several GPUs.", show_default=False)] = None,
    check: CheckOption = False,
    yes: YesOption = False,
    accept_shared_group: Annotated[bool, typer.Option(
        "--accept-shared-group", help="Accept that the card's IOMMU group holds other devices "
        "(never the root disk's controller or the management NIC); they go to vfio-pci too.")
    ] = False,
    iommu_pt: Annotated[bool, typer.Option(
        "--iommu-pt", help="Also add iommu=pt: devices the host keeps skip DMA translation "
        "(faster host I/O, less isolation for them; passed-through devices stay isolated).")
    ] = False,
) -> None:
    """Turn the IOMMU on and give the GPU to vfio-pci: inspect, plan, confirm, apply the roles
    through playbooks/host_setup.yml, reboot once, verify. A second run changes nothing."""
    from gpuprov.stages.host_setup import Setup  # keeps --help fast

    # --check changes nothing, so it shows the plan even where the real run needs --yes.
    setup_ = Setup.prepare(host, inventory=inventory, gpus=gpu or [],
                           accept_shared_group=accept_shared_group, assume_yes=yes or check,
                           iommu_passthrough_mode=iommu_pt)
    _render_plan(setup_)
    if yes and not check and not setup_.plan.ready:
        # Confirmed in advance, with work to do: the run's own diffs are the preview. A
        # check-mode pass first would walk the host twice (about 15 s on a lab host).
        applied = _apply_setup(setup_, host)
        _render_changes(applied, "changed")
    else:
        # Even a ready host gets the preview: its files may have drifted from what it runs now.
        preview = setup_.preview()
        if not preview.changes:
            if not setup_.plan.ready:
                raise GpuprovError(
                    f"{host}'s configuration is already in place but not active: it has not "
                    "booted into it",
                    f"reboot {host}, then check with: gpuprov host inspect {host}")
            console.print(f"[green]nothing to do:[/] {host} is ready and its configuration "
                          "matches; no change, no reboot")
            return
        if not _preview_confirmed(preview, check, yes,
                                  f"apply these changes to {host} and reboot it once?"):
            return
        applied = _apply_setup(setup_, host)
    after = setup_.verify()
    _render_done(after, applied)


def _apply_setup(setup_, host: str):
    from gpuprov.stages.host_setup import PlaybookFailed

    try:
        with progress() as report:
            applied = setup_.apply(lambda _host, task: report(host, task))
            report(host, "ready: applied, rebooted and verified by the playbook")
    except PlaybookFailed as failed:
        if failed.result.changes:
            raise
        # Nothing needed changing, yet the host is not ready: it has not booted into its
        # configuration (the playbook's verification says what is missing).
        raise GpuprovError(f"{failed.message}\n  nothing was changed on {host}",
                           f"{failed.hint}; if {host}'s configuration is in place and only "
                           f"the reboot is missing, reboot it, then check with: gpuprov host "
                           f"inspect {host}") from None
    return applied


@app.command()
def rollback(
    host: Annotated[str, typer.Argument(help="Inventory host name.")],
    inventory: InventoryOption = None,
    check: CheckOption = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Go ahead without asking.")] = False,
) -> None:
    """Undo host setup: put back the backed-up files, remove the ones gpuprov added, rebuild
    the boot configuration and initramfs, reboot once (playbooks/host_rollback.yml)."""
    from gpuprov.stages.host_setup import Rollback

    rollback_ = Rollback.prepare(host, inventory=inventory)
    preview = rollback_.preview()
    if not preview.changes:
        console.print(f"[green]nothing to do:[/] {host} has no gpuprov changes to undo")
        return
    if not _preview_confirmed(preview, check, yes,
                              f"restore {host}'s original files and reboot it once?"):
        return
    with progress() as report:
        rollback_.apply(lambda _host, task: report(host, task))
        report(host, "ready: restored and rebooted")
    after = rollback_.verify()
    for verdict in after.verdicts:
        _render_gpu(after.facts, verdict)


def _preview_confirmed(preview, check: bool, yes: bool, question: str) -> bool:
    """Show the preview's diffs; False under --check (nothing changes), else ask (or --yes)."""
    _render_changes(preview, "would change" if check else "will change")
    if check:
        console.print("--check: nothing was changed")
        return False
    _confirm(yes, question)
    return True


def _confirm(yes: bool, question: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError("not confirmed: standard input is not a terminal",
                         "review the plan above (or run with --check), then pass --yes")
    if not Confirm.ask(question, console=err_console, default=False):
        raise typer.Abort()


def _render_plan(setup_) -> None:
    plan = setup_.plan
    table = Table("function", "ids", "driver now", "group", "after setup",
                  title=f"plan for {setup_.target.host}", title_justify="left")
    for address in plan.addresses:
        device = setup_.before.facts.device(address)
        table.add_row(address, device.vendor_device if device else "?",
                      (device.driver if device else None) or "none",
                      "-" if not device or device.iommu_group is None
                      else str(device.iommu_group), "vfio-pci")
    console.print(table)
    params = setup_.before.kernel_params
    for reason in (*params.reasons, *plan.reasons):
        console.print(f"  {reason}", highlight=False)
    for verdict in setup_.before.verdicts:
        if verdict.gpu in plan.gpus and not plan.ready:
            for warning in verdict.warnings:
                console.print(f"  [yellow]warning:[/] {warning.reason}; {warning.fix}",
                              highlight=False)


def _render_changes(result, heading: str) -> None:
    if not result.changes:
        console.print(f"{heading}: nothing")
        return
    console.print(f"[bold]{heading}:[/]")
    for change in result.changes:
        console.print(f"  [yellow]~[/] {change.task}", highlight=False)
        for diff in change.diffs:
            console.print(Syntax(diff.rstrip("\n"), "diff", theme="ansi_dark",
                                 background_color="default"), highlight=False)


def _render_done(after, applied) -> None:
    for verdict in after.verdicts:
        _render_gpu(after.facts, verdict)
    rebooted = any("Reboot" in c.task for c in applied.changes)
    console.print(f"[green]ready:[/] {after.host}: every function on vfio-pci, "
                  f"/dev/vfio present ({len(applied.changes)} changes, "
                  f"{'one reboot' if rebooted else 'no reboot'})")
