"""``gpuprov driver``: which NVIDIA driver a GPU needs on a distro, and why."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from gpuprov.cli.output import console, print_json, progress

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


def _debian_match(gpu: str, cuda: str | None, distro: str, modules: str | None, verb: str):
    """The matched driver and the Debian codename, for the commands that read Debian's archive."""
    from gpuprov.errors import UsageError
    from gpuprov.plan import driver

    data = driver.DriverData.load()
    found = driver.match(data, driver.DriverRequest(gpu=gpu, distro=distro, cuda=cuda,
                                                    modules=modules))
    info = data.distros[found.distro]
    if info["family"] != "debian":
        raise UsageError(f"{verb} plans from Debian's archive; {found.distro_name} is not "
                         "Debian", "use --distro debian12 or debian13")
    return found, info["codename"]


MirrorOption = Annotated[str, typer.Option("--mirror", help="The Debian mirror the host uses.")]
SecurityMirrorOption = Annotated[str, typer.Option(
    "--security-mirror", help="Its security mirror; '' for none.")]
DebianOption = Annotated[str, typer.Option("--distro", help="debian12 or debian13.")]
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY_MIRROR = "http://deb.debian.org/debian-security"


@app.command(epilog=(
    "Exit codes: 0 planned; 2 bad input, or the archive's NVIDIA packages do not fit together "
    "at any version; 3 the GPU id is unknown; 4 the archive could not be read; 1 this machine "
    "has no apt."
))
def pins(
    gpu: GpuOption,
    cuda: CudaOption = None,
    distro: Annotated[str, typer.Option(
        "--distro", help="debian12 or debian13 (from the archive); ubuntu22.04, ubuntu24.04 "
        "or rhel9 (from gpuprov's data, with --version).")] = "debian12",
    modules: ModulesOption = None,
    headless: Annotated[bool, typer.Option(
        "--headless", help="The compute-only set (no X, no OpenGL).")] = False,
    version: Annotated[str | None, typer.Option(
        "--version", help="Ubuntu and RHEL only: the driver version to hold (535.261.03; "
        "3:550.163.01-1.el9 on RHEL), as the distro's package list shows it.",
        show_default=False)] = None,
    mirror: MirrorOption = DEBIAN_MIRROR,
    security_mirror: SecurityMirrorOption = DEBIAN_SECURITY_MIRROR,
    as_json: JsonOption = False,
) -> None:
    """The apt preferences file that pins the matched driver, and every NVIDIA package it
    pulls in, to one exact version: planned from the archive's own package records (release,
    -updates and -security suites, read with apt in a private directory). Changes nothing;
    the file goes to /etc/apt/preferences.d/ on the host. For Ubuntu and the RHEL family, whose
    archives gpuprov cannot read here, the pins (apt preferences and holds; dnf versionlock and
    module stream) and the repository setup of the matched packages at --version, from data."""

    from gpuprov import drivers
    from gpuprov.transport.apt_archive import redact

    if distro.startswith(("ubuntu", "rhel")):
        _distro_pins(gpu, cuda, distro, modules, headless, version, as_json)
        return
    if version is not None:
        from gpuprov.errors import UsageError

        raise UsageError("--version is for Ubuntu and RHEL: on Debian the pins come from the "
                         "archive, at the version it has", "leave --version out")
    found, codename = _debian_match(gpu, cuda, distro, modules, "driver pins")
    sources = drivers.debian_sources(mirror, security_mirror, codename)
    requested = found.headless if headless else found.packages
    plan, _ = drivers.plan_from_archive(sources, requested)
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


def _distro_pins(gpu, cuda, distro, modules, headless, version, as_json) -> None:
    from gpuprov.errors import UsageError
    from gpuprov.plan import distro_pins, driver

    if version is None:
        raise UsageError(f"--distro {distro} needs --version: gpuprov cannot read its archive "
                         "from here", "give the version the distro's package list shows, such "
                         "as 535.261.03 (Ubuntu) or 3:550.163.01-1.el9 (RHEL)")
    data = driver.DriverData.load()
    found = driver.match(data, driver.DriverRequest(gpu=gpu, distro=distro, cuda=cuda,
                                                    modules=modules))
    planned = distro_pins.plan_distro_pins(data, found, version, headless=headless)
    if as_json:
        print_json({"gpu": found.gpu, **planned.to_json()})
        return
    typer.echo(f"# gpuprov driver pins: {found.gpu} ({found.name}) on {found.distro_name}, "
               f"{found.modules} modules, driver {planned.driver_version}; from gpuprov's data, "
               "not proven on a real host")
    typer.echo("# sources: " + "; ".join(planned.sources))
    for command in planned.setup:
        typer.echo(command)
    if planned.module_stream:
        typer.echo(f"dnf module enable -y {planned.module_stream}")
    if planned.versionlock:
        typer.echo("dnf versionlock add " + " ".join(planned.versionlock))
    if planned.preferences:
        typer.echo(f"# /etc/apt/preferences.d/gpuprov-nvidia.pref\n{planned.preferences}", nl=False)
        typer.echo("apt-mark hold " + " ".join(planned.hold))


@app.command(epilog=(
    "Exit codes: 0 built, or found in the cache; 2 bad input (the kernel, the distro, half a key "
    "pair), or the archive's NVIDIA packages do not fit together; 3 the GPU id is unknown, or "
    "the archive has no headers for that kernel; 4 the archive could not be read; 1 the build "
    "failed (the message names its log), or this machine lacks root or debootstrap."
))
def build(
    gpu: GpuOption,
    kernel: Annotated[str, typer.Option(
        "--kernel", help="The nodes' kernel, as `uname -r` prints it (6.1.0-50-amd64).",
        show_default=False)],
    cuda: CudaOption = None,
    distro: DebianOption = "debian12",
    modules: ModulesOption = None,
    mok_key: Annotated[Path | None, typer.Option(
        "--mok-key", help="The fleet's Secure Boot signing key (read, never copied out).",
        show_default=False)] = None,
    mok_cert: Annotated[Path | None, typer.Option(
        "--mok-cert", help="Its certificate, as enrolled with mokutil.",
        show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Also copy the tarball into this directory.", show_default=False)] = None,
    mirror: MirrorOption = DEBIAN_MIRROR,
    security_mirror: SecurityMirrorOption = DEBIAN_SECURITY_MIRROR,
    as_json: JsonOption = False,
) -> None:
    """Build the matched driver's kernel module once, for a fleet, in a chroot of the target
    distro: a DKMS binaries-only tarball that nodes install with `dkms ldtarball` and `dkms
    install` in a second, instead of compiling it each. Its package is pinned with the rest of
    the driver (as `driver pins --headless` plans), and it is signed with the fleet's MOK key
    when one is given. Kept in the cache (~/.cache/gpuprov/driver-build) by everything that
    shapes it, so a second build of the same is instant. Needs root; changes nothing outside
    its cache."""
    import shutil

    from gpuprov import drivers
    from gpuprov.lab.image import default_cache_dir
    from gpuprov.plan import driver_build
    from gpuprov.transport.apt_archive import redact

    mok = drivers.MokPair.from_options(mok_key, mok_cert)
    found, codename = _debian_match(gpu, cuda, distro, modules, "driver build")
    driver_build.check_kernel(kernel)  # before any download
    sources = drivers.debian_sources(mirror, security_mirror, codename)
    _, plan = drivers.plan_from_archive(sources, found.headless, kernel=kernel,
                                        codename=codename, mok=mok)
    with progress() as report:
        builder = drivers.ModuleBuilder(default_cache_dir(), mirror,
                                        lambda message: report("driver build", message))
        built = builder.build(plan, sources, mok)
    copy = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        copy = Path(shutil.copy(built.tarball, out))
    if as_json:
        print_json({**plan.to_json(), "gpu": found.gpu, "modules": found.modules,
                    "packages": found.headless,
                    "dkms_name": built.dkms_name, "kernel_modules": built.modules,
                    "tarball": str(built.tarball), "copy": str(copy) if copy else None,
                    "cached": built.cached, "pins": plan.pins.pins,
                    "sources": [redact(line) for line in sources]})
        return
    state = "found in the cache" if built.cached else "built"
    console.print(f"{escape(plan.package)} {escape(plan.version)} for {escape(kernel)}: {state}, "
                  f"{'signed' if built.signed else 'unsigned'} ({', '.join(built.modules)})",
                  highlight=False)
    console.print(f"tarball: {escape(str(copy or built.tarball))}", highlight=False)
    console.print(f"install on a node: dkms ldtarball {escape((copy or built.tarball).name)} && "
                  f"dkms install -m {escape(built.dkms_name)} -v {plan.driver_version} "
                  f"-k {escape(kernel)}", highlight=False)
