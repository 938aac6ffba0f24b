"""``gpuprov vm``: create passthrough VMs, or give a card to an existing VM.

One command for every hypervisor; ``--hypervisor`` picks the backend in ``gpuprov.hypervisors``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.prompt import Confirm
from rich.table import Table

from gpuprov.cli.output import console, err_console, print_json, progress
from gpuprov.errors import UsageError

app = typer.Typer(help="Create passthrough VMs on Proxmox VE, ESXi or libvirt.",
                  no_args_is_help=True)

InventoryOption = Annotated[Path | None, typer.Option(
    "--inventory", "-i", envvar="GPUPROV_INVENTORY", show_default=False,
    help="Ansible inventory naming the host \\[default: the lab's inventory]")]


def _vmid(text: str | None) -> int | None:
    if text is None or text == "auto":
        return None
    if not text.isdigit() or not 100 <= int(text) <= 999_999_999:
        raise UsageError(f"--vmid {text!r} is not a VM id",
                         "give a number from 100 to 999999999, or auto for the next free one")
    return int(text)


def _options(pairs: Sequence[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--option {pair!r} is not KEY=VALUE",
                             "for example --option datacenter=DC0")
        options[key.strip()] = value.strip()
    return options


def confirmer(assume_yes: bool):
    """``confirm(question, changes)`` for backends: --yes/--convert says yes; a terminal asks;
    anything else (CI, pipes) says no, so nothing is converted without a person's yes."""

    def confirm(question: str, changes: Sequence[str]) -> bool:
        if assume_yes:
            return True
        if not sys.stdin.isatty():
            return False
        err_console.print(f"[bold]{question}[/]")
        for change in changes:
            err_console.print(f"  {change}", highlight=False)
        return Confirm.ask("go ahead?", console=err_console, default=False)

    return confirm


@app.command()
def passthrough(
    gpu: Annotated[str, typer.Option("--gpu", help="The card: 26:00 (all functions), "
                                     "26:00.0 or 0000:26:00.0.", show_default=False)],
    host: Annotated[str, typer.Option("--host", help="Inventory name of the hypervisor host "
                                      "(Proxmox node, ESXi host or vCenter, libvirt host).",
                                      show_default=False)],
    hypervisor: Annotated[str, typer.Option(
        "--hypervisor", help="proxmox, esxi or libvirt.")] = "proxmox",
    inventory: InventoryOption = None,
    vm: Annotated[str | None, typer.Option(
        "--vm", help="An existing VM (id or name) to give the card to.",
        show_default=False)] = None,
    vmid: Annotated[str | None, typer.Option(
        "--vmid", help="Proxmox VM id: a new one, auto (the next free), or an existing VM's.",
        show_default=False)] = None,
    name: Annotated[str | None, typer.Option("--name", help="Name of a new VM.",
                                             show_default=False)] = None,
    cores: Annotated[int, typer.Option("--cores", min=1, help="vCPUs of a new VM.")] = 4,
    memory: Annotated[str, typer.Option(
        "--memory", help="Memory of a new VM (8G, 8192 = MiB); all of it is pinned.")] = "8G",
    disk: Annotated[str, typer.Option("--disk", help="System disk of a new VM (32G).")] = "32G",
    storage: Annotated[str | None, typer.Option(
        "--storage", help="Proxmox storage / ESXi datastore / libvirt pool for the new VM's "
        "disks.",
        show_default=False)] = None,
    iso: Annotated[str | None, typer.Option(
        "--iso", help="Installer ISO, as the hypervisor names it "
        "(local:iso/debian.iso, [datastore1] iso/debian.iso, a path on a libvirt host).",
        show_default=False)] = None,
    mapping: Annotated[str | None, typer.Option(
        "--mapping", help="Proxmox: use (or create) this PCI resource mapping.",
        show_default=False)] = None,
    x_vga: Annotated[bool, typer.Option(
        "--x-vga", help="Make the card the VM's primary display.")] = False,
    hide_hypervisor: Annotated[bool, typer.Option(
        "--hide-hypervisor", help="ESXi: hypervisor.cpuid.v0=FALSE (can break vSphere 7 "
        "guests); libvirt: KVM hidden; for consumer cards whose driver refuses to run in a "
        "VM.")] = False,
    start: Annotated[bool, typer.Option("--start/--no-start",
                                        help="Start the VM afterwards.")] = True,
    keep_on_failure: Annotated[bool, typer.Option(
        "--keep-on-failure", help="Keep a half-made VM for debugging instead of removing it.")
    ] = False,
    convert: Annotated[bool, typer.Option(
        "--convert", "--yes", help="Convert an existing VM (q35, UEFI, EFI disk) without "
        "asking.")] = False,
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", help="Backend-specific KEY=VALUE (esxi: datacenter, cluster, "
        "esx_host; libvirt: kernel, initrd, cmdline, network, bridge); repeatable.",
        show_default=False)] = None,
    address: Annotated[str | None, typer.Option(
        "--address", help="The VM's IP address or DNS name, for the inventory gpuprov keeps "
        "of its VMs \\[default: unknown: the entry to add is printed].",
        show_default=False)] = None,
    ssh_user: Annotated[str, typer.Option(
        "--ssh-user", help="The user the VM's SSH accepts, for that inventory.")] = "root",
    inventory_out: Annotated[Path | None, typer.Option(
        "--inventory-out", help="The inventory file recording the VM for the next stages "
        "\\[default: $XDG_STATE_HOME/gpuprov/vms.yml].", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """Create a q35/UEFI VM with the GPU passed through, or give the GPU to an existing VM."""
    from gpuprov import vm_inventory
    from gpuprov.facts.pci import parse_address
    from gpuprov.hypervisors import PassthroughRequest, VmShape, load_backend
    from gpuprov.units import parse_size

    # Checked before any change: the VM is recorded in this file once it has the card.
    if address is not None:
        address = vm_inventory.check_address(address)
    vm_inventory.check_user(ssh_user)
    inventory_file = (inventory_out or vm_inventory.default_path()).expanduser().absolute()
    recorded_before = vm_inventory.read(inventory_file)

    if vm is not None and vmid is not None:
        raise UsageError("--vm and --vmid both name the VM", "give one of them")
    memory_bytes = parse_size(memory, default_unit="M", what="--memory")
    if memory_bytes < 2**20:
        raise UsageError(f"--memory {memory} is less than 1 MiB", "for example --memory 8G")
    request = PassthroughRequest(
        host=host,
        gpu=parse_address(gpu),
        inventory=inventory,
        vm=vm,
        vmid=_vmid(vmid),
        shape=VmShape(
            name=name, cores=cores,
            memory_mib=memory_bytes // 2**20,
            disk_gib=max(1, parse_size(disk, default_unit="G", what="--disk") // 2**30),
            storage=storage, iso=iso),
        mapping=mapping,
        x_vga=x_vga,
        hide_hypervisor=hide_hypervisor,
        start=start,
        keep_on_failure=keep_on_failure,
        options=_options(option or []),
    )
    backend = load_backend(hypervisor)
    with progress() as report:
        result = backend.passthrough(request, report, confirmer(convert))
    name = vm_inventory.host_name(result.vm_name)
    variables = vm_inventory.host_vars(address=address, user=ssh_user,
                                       hypervisor=result.hypervisor, host=result.host,
                                       vm_id=result.vm_id, devices=result.devices)
    if address:
        vm_inventory.write(inventory_file,
                           vm_inventory.merged(recorded_before, name, variables))
    if as_json:
        print_json({**result.to_json(), "inventory": {
            "file": str(inventory_file) if address else None, "host": name,
            "recorded": bool(address), "vars": variables}})
        return
    verb = "created" if result.created else "gave the card to"
    table = Table(title=f"{verb} VM {result.vm_id} ({result.vm_name}) on {result.host} "
                  f"[{result.hypervisor}]", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for device in result.devices:
        table.add_row("device", device)
    for key, value in result.settings.items():
        table.add_row(key, value)
    table.add_row("running", "yes" if result.started else "no")
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    if address:
        console.print(f"recorded VM {name} in {inventory_file}; the next stages take it as: "
                      f"-i {inventory_file} {name}", highlight=False)
    else:
        console.print("the VM's address is not known yet (give it with --address), so it was "
                      f"not recorded in {inventory_file}. Once it has one, add this to an "
                      "inventory, with ADDRESS filled in:", highlight=False)
        console.print(vm_inventory.entry_text(name, variables), highlight=False, markup=False)


@app.command()
def devices(
    host: Annotated[str, typer.Option("--host", help="Inventory name of the ESXi host or "
                                      "vCenter.", show_default=False)],
    hypervisor: Annotated[str, typer.Option(
        "--hypervisor", help="esxi (the backend with host-side passthrough switches).")
    ] = "esxi",
    inventory: InventoryOption = None,
    enable: Annotated[str | None, typer.Option(
        "--enable", help="Enable passthrough on this card (26:00, 0000:26:00.0) and its sibling "
        "functions.", show_default=False)] = None,
    reboot: Annotated[bool, typer.Option(
        "--reboot", help="If a passthrough change waits for it: maintenance mode, reboot, wait "
        "for the host, leave maintenance mode (asks first).")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Reboot without asking.")] = False,
    show_all: Annotated[bool, typer.Option(
        "--all", help="Also list devices that cannot be passed through.")] = False,
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", help="KEY=VALUE choosing the host on a vCenter: datacenter, cluster, "
        "esx_host; repeatable.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """List a host's PCI devices with their passthrough state; enable a card; reboot to apply."""
    from gpuprov.facts.pci import parse_address
    from gpuprov.hypervisors import load_backend

    if yes and not reboot:
        raise UsageError("--yes answers the reboot question only, and there is none without "
                         "--reboot", "add --reboot, or leave out --yes")
    backend = load_backend(hypervisor)
    if not hasattr(backend, "host_devices"):
        raise UsageError(f"the {hypervisor} backend has no host-side passthrough switches",
                         "see the host's devices with: gpuprov host inspect HOST")
    with progress() as report:
        result = backend.host_devices(
            host, inventory, _options(option or []), report, confirmer(yes),
            enable=parse_address(enable) if enable is not None else None, reboot=reboot)
    if as_json:
        print_json(result.to_json())
        return
    table = Table(title=f"PCI devices of {result.host} [{result.hypervisor}]",
                  title_justify="left")
    for column in ("address", "ids", "device", "passthrough"):
        table.add_column(column, overflow="fold")
    for function in result.functions:
        if show_all or function.capable:
            table.add_row(function.address, function.ids, function.name, function.state)
    console.print(table)
    for address in result.changed:
        console.print(f"enabled: {address}", highlight=False)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)


@app.command()
def mapping(
    host: Annotated[str, typer.Option("--host", help="Inventory name of the Proxmox VE node.",
                                      show_default=False)],
    inventory: InventoryOption = None,
    create: Annotated[str | None, typer.Option(
        "--create", help="Map this card (26:00, 0000:26:00.0) on the node, so VMs can use it "
        "by name, from API tokens too, and move between nodes.", show_default=False)] = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="Id of the mapping to create \\[default: gpu-BUS-DEVICE].",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """List the cluster's PCI resource mappings (Proxmox VE); create one for a card."""
    from gpuprov.facts.pci import parse_address
    from gpuprov.hypervisors import load_backend

    backend = load_backend("proxmox")
    with progress() as report:
        result = backend.mappings(host, inventory, report,
                                  create=parse_address(create) if create else None, name=name)
    if as_json:
        print_json(result.to_json())
        return
    table = Table(title=f"PCI resource mappings seen from {result.host} [proxmox]",
                  title_justify="left")
    for column in ("id", "description", "map"):
        table.add_column(column, overflow="fold")
    for entry in result.mappings:
        table.add_row(str(entry.get("id")), str(entry.get("description", "")),
                      "\n".join(str(item) for item in entry.get("map") or []))
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
