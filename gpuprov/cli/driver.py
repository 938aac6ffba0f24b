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


@app.command(epilog=(
    "Exit codes: 0 matched; 2 bad input, or no driver meets the request (the message says "
    "why and names the newest branch the card supports); 3 the GPU id is unknown."
))
def match(
    gpu: Annotated[str, typer.Option(
        "--gpu", help="The GPU's PCI id, VENDOR:DEVICE as lspci -nn prints it (10de:2330).",
        show_default=False)],
    cuda: Annotated[str | None, typer.Option(
        "--cuda", help="The CUDA toolkit the node must run (12.4): the driver must support it.",
        show_default=False)] = None,
    distro: Annotated[str, typer.Option(
        "--distro", help="debian12, debian13, ubuntu22.04, ubuntu24.04 or rhel9.")] = "debian12",
    modules: Annotated[str | None, typer.Option(
        "--modules", help="open or proprietary kernel modules [default: what the card and "
        "branch call for]", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
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
