"""``gpuprov driver``: which NVIDIA driver a GPU needs on a distro, and why."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from gpuprov.cli.output import console, print_json

app = typer.Typer(
    help="Match NVIDIA drivers to GPUs: the branch, the kernel modules and the packages.",
    no_args_is_help=True,
)


# The request both commands take, as `driver match` documents it.
GpuOption = Annotated[str, typer.Option(
    "--gpu", help="The GPU's PCI id, VENDOR:DEVICE as lspci -nn prints it (10de:2330).",
    show_default=False)]
CudaOption = Annotated[str | None, typer.Option(
    "--cuda", help="The CUDA toolkit the node must run (12.4): the driver must support it.",
    show_default=False)]
ModulesOption = Annotated[str | None, typer.Option(
    "--modules", help="open or proprietary kernel modules \\[default: what the card and "
    "branch call for]", show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]


@app.command(epilog=(
    "Exit codes: 0 matched; 2 bad input, or no driver meets the request (the message says "
    "why and names the newest branch the card supports); 3 the GPU id is unknown."
))
def match(
    gpu: GpuOption,
    cuda: CudaOption = None,
    distro: Annotated[str, typer.Option(
        "--distro", help="debian12, debian13, ubuntu22.04, ubuntu24.04 or rhel9.")] = "debian12",
    modules: ModulesOption = None,
    as_json: JsonOption = False,
) -> None:
    """Pick the driver branch, open or proprietary kernel modules, and the distro's exact
    packages for a GPU, from Debian's nvidia-detect id lists, pci.ids, and NVIDIA's CUDA and
    legacy-GPU tables (gpuprov/data/nvidia, each file names its sources). Changes nothing."""
    from gpuprov.plan import driver  # keeps --help fast

    found = driver.match(driver.DriverData.load(),
                         driver.DriverRequest(gpu=gpu, distro=distro, cuda=cuda, modules=modules))
    if as_json:
        print_json(found.to_json())
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("gpu", f"{found.gpu}  {found.name} ({found.chip}, {found.architecture or 'unknown'})"),
        ("distro", found.distro_name),
        ("branch", f"{found.branch}" + (f" ({found.version})" if found.version else "")),
        ("modules", found.modules),
        ("module stream", found.module_stream),
        ("packages", " ".join(found.packages)),
        ("headless", " ".join(found.headless) if found.headless != found.packages else None),
        ("cuda", f"{found.cuda} (needs {found.cuda_minimum_driver} or newer)"
         if found.cuda else None),
    ]
    for label, value in rows:
        if value:
            table.add_row(label, escape(value))
    console.print(table)
    console.print("[bold]why[/]")
    for reason in found.why:
        console.print(f"  - {escape(reason)}", highlight=False)


@app.command(epilog=(
    "Exit codes: 0 planned; 2 bad input, or the archive's NVIDIA packages do not fit together "
    "at any version; 3 the GPU id is unknown; 4 the archive could not be read; 1 this machine "
    "has no apt."
))
def pins(
    gpu: GpuOption,
    cuda: CudaOption = None,
    distro: Annotated[str, typer.Option("--distro", help="debian12 or debian13.")] = "debian12",
    modules: ModulesOption = None,
    headless: Annotated[bool, typer.Option(
        "--headless", help="The compute-only set (no X, no OpenGL).")] = False,
    mirror: Annotated[str, typer.Option(
        "--mirror", help="The Debian mirror the host uses.")] = "http://deb.debian.org/debian",
    security_mirror: Annotated[str, typer.Option(
        "--security-mirror", help="Its security mirror; '' for none.",
    )] = "http://deb.debian.org/debian-security",
    as_json: JsonOption = False,
) -> None:
    """The apt preferences file that pins the matched driver, and every NVIDIA package it
    pulls in, to one exact version: planned from the archive's own package records (release,
    -updates and -security suites, read with apt in a private directory). Changes nothing;
    the file goes to /etc/apt/preferences.d/ on the host."""
    import tempfile
    from pathlib import Path

    from gpuprov.errors import UsageError
    from gpuprov.plan import apt_pins, driver
    from gpuprov.transport.apt_archive import COMPONENTS, PrivateApt, redact

    data = driver.DriverData.load()
    found = driver.match(data, driver.DriverRequest(gpu=gpu, distro=distro, cuda=cuda,
                                                    modules=modules))
    info = data.distros[found.distro]
    if info["family"] != "debian":
        raise UsageError(f"driver pins plans from Debian's archive; {found.distro_name} is not "
                         "Debian", "use --distro debian12 or debian13")
    codename = info["codename"]
    sources = [f"deb {mirror} {codename} {COMPONENTS}",
               f"deb {mirror} {codename}-updates {COMPONENTS}"]
    if security_mirror:
        sources.append(f"deb {security_mirror} {codename}-security {COMPONENTS}")
    requested = found.headless if headless else found.packages
    with tempfile.TemporaryDirectory(prefix="gpuprov-apt-") as scratch:
        archive = PrivateApt(Path(scratch), sources)
        archive.update()
        plan = apt_pins.plan_pins(requested, apt_pins.parse_records(archive.records()))
    if as_json:
        print_json({"gpu": found.gpu, "distro": found.distro, "modules": found.modules,
                    "packages": requested, "sources": [redact(line) for line in sources],
                    **plan.to_json()})
        return
    header = "\n".join([
        f"gpuprov driver pins: {found.gpu} ({found.name}) on {found.distro_name}, "
        f"{found.modules} modules: every NVIDIA package at driver {plan.driver_version}.",
        "Planned from these apt sources:", *(f"  {redact(line)}" for line in sources)])
    typer.echo(plan.preferences(header), nl=False)
    for reason in plan.why:
        typer.echo(f"# why: {reason}", err=True)
