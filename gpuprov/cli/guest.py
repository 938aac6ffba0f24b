"""``gpuprov guest``: the NVIDIA driver, fabricmanager and the container toolkit on a GPU node or
a passthrough VM: inspect it, set it up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from gpuprov.cli.driver import CudaOption, ModulesOption
from gpuprov.cli.host import VERDICT_STYLE, InventoryOption, PatternArgument
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
    help="The guest stage: the NVIDIA driver matched to the cards, fabricmanager in lockstep "
         "with it, the container toolkit wired to the runtimes.",
    no_args_is_help=True,
)

RuntimeOption = Annotated[list[str] | None, typer.Option(
    "--runtime", help="Wire this runtime (docker, containerd, crio) to the NVIDIA runtime; "
    "repeatable \\[default: every one installed]", show_default=False)]
DefaultRuntimeOption = Annotated[bool, typer.Option(
    "--default-runtime", help="Make nvidia the runtimes' default runtime.")]


def _request(cuda, modules, runtime, default_runtime, force_fabricmanager=False):
    from gpuprov.plan.guest import GuestRequest

    request = GuestRequest(cuda=cuda, modules=modules, runtimes=tuple(runtime or ()),
                           default_runtime=default_runtime,
                           force_fabricmanager=force_fabricmanager)
    request.check()
    return request


@app.command(epilog=(
    "Exit codes: 0 ready; 10 needs setup; 20 unsafe to set up (why, and the fix); 3 no NVIDIA "
    "GPU found; 2 bad input, or no driver meets the request; 4 the host did not answer over "
    "SSH; 1 the probe failed. Over several hosts: the worst host's code (README, Exit codes)."
))
def inspect(
    pattern: PatternArgument,
    inventory: InventoryOption = None,
    cuda: CudaOption = None,
    modules: ModulesOption = None,
    runtime: RuntimeOption = None,
    default_runtime: DefaultRuntimeOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
    forks: ForksOption = 16,
) -> None:
    """Report the GPUs, the driver branch they need and why, what is installed (packages, pins,
    holds), the module's state for the running kernel, nouveau, the runtimes' wiring and the
    NVLink fabric, with a verdict: ready, needs setup (and what), or unsafe (why). Changes
    nothing. Over several hosts, one table."""
    from gpuprov import inventory as inventory_  # keeps --help fast
    from gpuprov.stages import guest as stage

    request = _request(cuda, modules, runtime, default_runtime)
    hosts = inventory_.hosts_matching(pattern, inventory)
    if hosts == [pattern]:
        report = stage.run(pattern, request, inventory=inventory)
        if as_json:
            print_json({"host": pattern, **report.to_json()})
        else:
            render_report(pattern, report)
        raise typer.Exit(report.exit_code)
    results = stage.run_many(hosts, request, inventory=inventory, forks=forks)
    code = worst(r.exit_code for r in results)
    if as_json:
        print_json({"exit_code": code, "hosts": [
            {"host": h, **r.to_json()} if not isinstance(r, Exception)
            else {"host": h, "exit_code": r.exit_code, "error": r.message, "hint": r.hint}
            for h, r in zip(hosts, results, strict=True)]})
    else:
        _render_fleet(hosts, results)
    raise typer.Exit(code)


def render_report(host: str, report) -> None:
    facts, match, states = report.facts, report.match, report.states
    table = Table(title=f"{host}: [{VERDICT_STYLE[report.status]}]{report.status}[/]",
                  show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("system", f"{facts.os_name}, kernel {facts.kernel}")
    table.add_row("GPUs", "\n".join(
        f"{c.describe()} {match.name}, driver {c.card.driver or 'none'}" for c in report.cards))
    table.add_row("needs", f"branch {match.branch}, {match.modules} modules: "
                  + " ".join(match.headless))
    table.add_row("  because", "\n".join(match.why))
    driver = states.driver
    table.add_row("driver", f"{facts.driver_version or 'not installed'}"
                  + (f", module {driver['module']} for {facts.kernel}, loaded "
                     f"{driver['loaded'] or 'none'}" if facts.driver_version else ""))
    table.add_row("secure boot", {True: "on", False: "off", None: "unknown (no UEFI)"}[
        driver["secure_boot"]] + (f", module signed by {driver['signer']}"
                                  if driver["signer"] else "")
                  + (f", MOK key {driver['mok']}" if driver["mok"] else ""))
    table.add_row("nvidia-smi", driver["gpu"])
    fabric = states.fabricmanager
    table.add_row("fabricmanager", (
        f"{len(fabric['nvswitches'])} NVSwitch(es); " if fabric["nvswitches"] else "no NVSwitch; ")
        + (", ".join(f"{p} {v}" for p, v in fabric["installed"].items()) or "not installed")
        + (f"; service {fabric['service'].get('ActiveState')}" if fabric["installed"] else ""))
    toolkit = states.toolkit
    if toolkit is not None:
        wired = []
        for name in toolkit["wanted"]:
            seen = toolkit["wired"].get(name, {})
            ok = ("nvidia" in seen.get("runtimes", []) if name == "docker"
                  else bool(seen.get("nvidia")))
            wired.append(f"{name} {toolkit['runtimes'].get(name, 'absent')}, nvidia runtime "
                         + ("wired" if ok else "not wired")
                         + (", default" if seen.get("default") == "nvidia" else ""))
        version = toolkit["installed"].get("nvidia-container-toolkit")
        table.add_row("container toolkit", (version or "not installed") + "\n" + "\n".join(wired))
    console.print(table)
    for item in report.missing:
        console.print(f"  [yellow]missing:[/] {escape(item)}", highlight=False)
    for refusal in report.refusals:
        console.print(f"  [red]unsafe:[/] {escape(refusal)}", highlight=False)
    for note in report.notes:
        err_console.print(f"note: {note}", highlight=False, markup=False)


def _render_fleet(hosts, results) -> None:
    table = Table("host", "GPUs", "branch", "driver", "verdict", "exit",
                  title=f"{len(hosts)} hosts", title_justify="left")
    for host, result in zip(hosts, results, strict=True):
        if isinstance(result, Exception):
            table.add_row(escape(host), "", "", "", f"[red]{escape(result.message)}[/]",
                          str(result.exit_code))
            continue
        table.add_row(escape(host), str(len(result.cards)), str(result.match.branch),
                      result.facts.driver_version or "none",
                      f"[{VERDICT_STYLE[result.status]}]{result.status}[/]",
                      str(result.exit_code))
    console.print(table)
    for host, result in zip(hosts, results, strict=True):
        if isinstance(result, Exception) and result.hint:
            err_console.print(f"hint: {escape(host)}: {escape(result.hint)}", highlight=False)


@app.command(epilog=(
    "Exit codes: 0 done (or nothing to do, or --check); 20 refused as unsafe (nothing "
    "changed); 2 bad input, or not confirmed; 3 no such host, or no NVIDIA GPU; 4 the host did "
    "not answer, or the archive could not be read; 1 the playbook, the module build or the "
    "verification failed. Over several hosts: the worst host's code (README, Exit codes)."
))
def setup(
    pattern: PatternArgument,
    inventory: InventoryOption = None,
    cuda: CudaOption = None,
    modules: ModulesOption = None,
    runtime: RuntimeOption = None,
    default_runtime: DefaultRuntimeOption = False,
    force_fabricmanager: Annotated[bool, typer.Option(
        "--force-fabricmanager", help="Install fabricmanager even where no NVSwitch is seen "
        "(a node whose NVSwitches appear later).")] = False,
    prebuilt: Annotated[bool, typer.Option(
        "--prebuilt", help="Build the driver's module once on this machine (gpuprov driver "
        "build: needs root) and install it on every node, instead of compiling it on each.")
    ] = False,
    mok_key: Annotated[Path | None, typer.Option(
        "--mok-key", help="With --prebuilt: the fleet's Secure Boot signing key (read, never "
        "copied out).", show_default=False)] = None,
    mok_cert: Annotated[Path | None, typer.Option(
        "--mok-cert", help="Its certificate, as enrolled with mokutil.",
        show_default=False)] = None,
    mirror: Annotated[str, typer.Option(
        "--mirror", help="The Debian mirror the nodes use.")] = "http://deb.debian.org/debian",
    security_mirror: Annotated[str, typer.Option(
        "--security-mirror", help="Its security mirror; '' for none.")
    ] = "http://deb.debian.org/debian-security",
    vars_file: Annotated[Path | None, typer.Option(
        "--vars", help="YAML of the roles' other variables: NVIDIA's repositories (or "
        "mirrors) and keys, the toolkit's version (roles/*/README.md).", show_default=False)
    ] = None,
    check: CheckOption = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Go ahead without asking.")] = False,
    serial: SerialOption = None,
    max_fail: MaxFailOption = None,
    forks: ForksOption = 16,
    as_json: JsonOption = False,
) -> None:
    """Install the NVIDIA driver the cards need (pinned and held, its module for the running
    kernel, nouveau kept off, one reboot at most), fabricmanager in lockstep with it where
    NVSwitches are, and the container toolkit wired to the runtimes: inspect, plan, confirm,
    apply playbooks/guest_setup.yml, verify. A second run changes nothing."""
    from gpuprov import drivers
    from gpuprov.stages import engine
    from gpuprov.stages.guest import DriverSource, GuestSetup, read_vars

    check_json(as_json, yes, check)
    request = _request(cuda, modules, runtime, default_runtime, force_fabricmanager)
    mok = drivers.MokPair.from_options(mok_key, mok_cert)
    if mok is not None and not prebuilt:
        from gpuprov.errors import UsageError

        raise UsageError("--mok-key and --mok-cert sign the module built with --prebuilt",
                         "add --prebuilt, or leave the key out (DKMS on the node then signs "
                         "with /var/lib/dkms/mok.key)")
    extra_vars = read_vars(vars_file)
    # Gathering may read the archive and build the module (minutes, once): say so as it goes.
    stage = GuestSetup(request, DriverSource(mirror, security_mirror, prebuilt, mok), extra_vars,
                       report=lambda host, message: err_console.print(
                           f"{host}: {message}", highlight=False, markup=False))
    ui = StageUi(question=lambda hosts: f"install the guest stage on {', '.join(hosts)} (a "
                 "reboot where the loaded driver must change)?", yes=yes, as_json=as_json,
                 render_plan=_render_plan)
    stage_request = engine.Request(check=check, yes=yes, serial=serial, max_fail=max_fail,
                                   forks=forks)
    run = engine.run(stage, pattern, inventory, stage_request, ui)
    finish(run, as_json=as_json, render_done=_render_done)


def _render_plan(outcome) -> None:
    console.print(f"[bold]plan for {escape(outcome.host)}[/]")
    for line in outcome.plan.reasons():
        console.print(f"  {escape(line)}", highlight=False)
    for item in outcome.plan.report.missing:
        console.print(f"  [yellow]to do:[/] {escape(item)}", highlight=False)


def _render_done(outcome) -> None:
    render_report(outcome.host, outcome.verified)
    console.print(f"[green]ready:[/] {escape(outcome.host)}: {escape(outcome.message)}",
                  highlight=False)
