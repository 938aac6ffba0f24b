"""``gpuprov host``: inspect a host, set it up for passthrough (IOMMU + vfio-pci), roll back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from gpuprov.cli.output import console, err_console, print_json
from gpuprov.cli.stages import (
    CheckOption,
    ForksOption,
    JsonOption,
    MaxFailOption,
    SerialOption,
    StageUi,
    check_json,
    finish,
)
from gpuprov.errors import worst

app = typer.Typer(
    help="Inspect a host and prepare it: IOMMU on, the GPU bound to vfio-pci.",
    no_args_is_help=True,
)

InventoryOption = Annotated[Path | None, typer.Option(
    "--inventory", "-i", envvar="GPUPROV_INVENTORY", show_default=False,
    help="Ansible inventory naming the host \\[default: the lab's inventory]")]


@app.command(epilog=(
    "Exit codes: 0 every GPU (or every one named) is ready; 10 some need setup; 20 some are "
    "unsafe to pass through; 3 no GPU found, or the named device is not there; 2 bad input; "
    "4 the host did not answer over SSH; 1 the probe failed. Over several hosts: the worst "
    "host's code (README, Exit codes)."
))
def inspect(
    pattern: Annotated[str, typer.Argument(
        help="Inventory host, or an Ansible host pattern (a group, gpu*, gpu_hosts:!pve3).",
        metavar="HOST")],
    inventory: InventoryOption = None,
    gpu: Annotated[list[str] | None, typer.Option(
        "--gpu", help="Only this GPU (26:00, 26:00.0 or 0000:26:00.0); repeatable.",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
    forks: ForksOption = 16,
) -> None:
    """Report the IOMMU, boot loader, kernel command line and every GPU, with a verdict per GPU:
    ready, needs setup (and what), or unsafe (why, and the fix). Changes nothing. Over several
    hosts, one table."""
    from gpuprov import inventory as inventory_  # keeps --help fast
    from gpuprov.stages import inspect as stage

    gpus = _selectors(gpu)
    hosts = inventory_.hosts_matching(pattern, inventory)
    if hosts == [pattern]:
        result = stage.run(pattern, inventory=inventory, gpus=gpus)
        if as_json:
            print_json(result.to_json())
        else:
            _render(result)
        raise typer.Exit(result.exit_code)
    results = stage.run_many(hosts, inventory=inventory, gpus=gpus, forks=forks)
    code = worst(r.exit_code for r in results)
    if as_json:
        print_json({"exit_code": code, "hosts": [
            r.to_json() if isinstance(r, stage.InspectResult)
            else {"host": h, "exit_code": r.exit_code, "error": r.message, "hint": r.hint}
            for h, r in zip(hosts, results, strict=True)]})
    else:
        _render_fleet(hosts, results)
    raise typer.Exit(code)


def _selectors(gpu: list[str] | None) -> list[str]:
    """--gpu values, checked before any host is read."""
    from gpuprov.facts import parse_address

    for address in gpu or []:
        parse_address(address)
    return gpu or []


def _render_fleet(hosts, results) -> None:
    from gpuprov.stages.inspect import InspectResult

    table = Table("host", "ssh", "CPU", "IOMMU", "boot loader", "GPUs", "exit",
                  title=f"{len(hosts)} hosts", title_justify="left")
    for host, result in zip(hosts, results, strict=True):
        if not isinstance(result, InspectResult):
            table.add_row(escape(host), "", "", "", "", f"[red]{escape(result.message)}[/]",
                          str(result.exit_code))
            continue
        facts = result.facts
        gpus = "\n".join(f"{v.gpu.slot}: [{VERDICT_STYLE[v.status]}]{v.status}[/]"
                         for v in result.verdicts) or "none"
        table.add_row(escape(host), escape(result.address), facts.cpu_vendor,
                      _yes_no(facts.iommu_active, "active", "off"), str(facts.bootloader),
                      gpus, str(result.exit_code))
    console.print(table)
    for host, result in zip(hosts, results, strict=True):
        if not isinstance(result, InspectResult) and result.hint:
            err_console.print(f"hint: {escape(host)}: {escape(result.hint)}", highlight=False)


VERDICT_STYLE = {"ready": "green", "needs setup": "yellow", "unsafe": "red"}


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
    colour = VERDICT_STYLE[verdict.status]
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
PatternArgument = Annotated[str, typer.Argument(
    help="Inventory host, or an Ansible host pattern (a group, gpu*, gpu_hosts:!pve3).",
    metavar="HOST")]


@app.command(epilog=(
    "Exit codes: 0 done (or nothing to do, or --check); 20 refused as unsafe (nothing "
    "changed); 2 bad input or not confirmed; 3 no such host or GPU; 4 the host did not answer; "
    "1 the playbook or the verification failed. Over several hosts: the worst host's code "
    "(README, Exit codes)."
))
def setup(
    pattern: PatternArgument,
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
    serial: SerialOption = None,
    max_fail: MaxFailOption = None,
    forks: ForksOption = 16,
    as_json: JsonOption = False,
) -> None:
    """Turn the IOMMU on and give the GPU to vfio-pci: inspect, plan, confirm, apply the roles
    through playbooks/host_setup.yml, reboot once, verify. A second run changes nothing."""
    from gpuprov.stages import engine  # keeps --help fast
    from gpuprov.stages.host_setup import HostSetup

    check_json(as_json, yes, check)
    # --check changes nothing, so it shows the plan even where the real run needs --yes.
    stage = HostSetup(gpus=_selectors(gpu), accept_shared_group=accept_shared_group,
                      assume_yes=yes or check, iommu_passthrough_mode=iommu_pt)
    ui = StageUi(question=lambda hosts: f"apply these changes to {', '.join(hosts)} and "
                 "reboot each once?", yes=yes, as_json=as_json, render_plan=_render_plan)
    run = engine.run(stage, pattern, inventory, engine.Request(
        check=check, yes=yes, serial=serial, max_fail=max_fail, forks=forks), ui)
    finish(run, as_json=as_json, render_done=_render_done)


@app.command(epilog=(
    "Exit codes: 0 done (or nothing to undo, or --check); 2 not confirmed; 3 no such host; "
    "4 the host did not answer; 1 the playbook failed. Over several hosts: the worst host's "
    "code."
))
def rollback(
    pattern: PatternArgument,
    inventory: InventoryOption = None,
    check: CheckOption = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Go ahead without asking.")] = False,
    serial: SerialOption = None,
    max_fail: MaxFailOption = None,
    forks: ForksOption = 16,
    as_json: JsonOption = False,
) -> None:
    """Undo host setup: put back what the roles recorded (each edited file from its backup,
    each added file removed), rebuild the boot configuration and initramfs, reboot once
    (playbooks/host_rollback.yml)."""
    from gpuprov.stages import engine
    from gpuprov.stages.host_setup import HostRollback

    check_json(as_json, yes, check)
    ui = StageUi(question=lambda hosts: f"restore the original files of {', '.join(hosts)} "
                 "and reboot each once?", yes=yes, as_json=as_json, render_plan=lambda _: None)
    run = engine.run(HostRollback(), pattern, inventory, engine.Request(
        check=check, yes=yes, serial=serial, max_fail=max_fail, forks=forks), ui)

    def render_done(outcome) -> None:
        for verdict in outcome.verified.verdicts:
            _render_gpu(outcome.verified.facts, verdict)
        console.print(f"[green]restored:[/] {escape(outcome.host)}: {escape(outcome.message)}",
                      highlight=False)

    finish(run, as_json=as_json, render_done=render_done)


def _render_plan(outcome) -> None:
    plan, before = outcome.plan, outcome.gathered
    table = Table("function", "ids", "driver now", "group", "after setup",
                  title=f"plan for {escape(outcome.host)}", title_justify="left")
    for address in plan.addresses:
        device = before.facts.device(address)
        table.add_row(address, device.vendor_device if device else "?",
                      (device.driver if device else None) or "none",
                      "-" if not device or device.iommu_group is None
                      else str(device.iommu_group), "vfio-pci")
    console.print(table)
    for reason in (*before.kernel_params.reasons, *plan.reasons):
        console.print(f"  {escape(reason)}", highlight=False)
    for verdict in before.verdicts:
        if verdict.gpu in plan.gpus and not plan.ready:
            for warning in verdict.warnings:
                console.print(f"  [yellow]warning:[/] {escape(warning.reason)}; "
                              f"{escape(warning.fix)}", highlight=False)


def _render_done(outcome) -> None:
    after = outcome.verified
    for verdict in after.verdicts:
        _render_gpu(after.facts, verdict)
    console.print(f"[green]ready:[/] {escape(outcome.host)}: every function on vfio-pci, "
                  f"/dev/vfio present ({escape(outcome.message)})", highlight=False)
