"""Proxmox VE: q35/OVMF VMs with the GPU passed through, through the PVE API (proxmoxer).

``passthrough`` checks first (node, device, IOMMU group, nobody else using the card, VM id
free), takes the path the identity may take (a root@pam password login may give the raw
address; an API token goes through a PCI resource mapping, created when missing), sizes the
64-bit MMIO window from the card's BARs read on the node, then creates the VM (or converts an
existing one, confirmed) and starts it, waiting on every task. A failed step removes the VM it
created (unless ``keep_on_failure``) or puts an existing VM's config back.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gpuprov.errors import GpuprovError, NotConfirmed, NotFoundError
from gpuprov.facts.pci import DeviceSelector
from gpuprov.hypervisors.base import (
    Confirm,
    PassthroughRequest,
    PassthroughResult,
    Report,
    refuse_flags,
)
from gpuprov.hypervisors.proxmox.connection import PveSettings, connect, settings_from
from gpuprov.plan import proxmox as plan

# (inventory name, inventory, addresses) -> BARs per address; None when they cannot be read
BarReader = Callable[[str, Path | None, Sequence[str]], Mapping[str, list[plan.Bar]]]
TASK_TIMEOUT = 900  # seconds; allocating a large disk on slow storage takes minutes
SHOWN_SETTINGS = ("machine", "bios", "efidisk0", "cpu", "cores", "memory", "balloon", "scsihw",
                  "args")


class TaskFailed(GpuprovError):
    """A PVE task (UPID) ended with an error; the message carries its log."""

    exit_code = 1


class ApiError(GpuprovError):
    """The PVE API refused a call; the message is the API's own."""

    exit_code = 1


def read_bars_over_ssh(name: str, inventory: Path | None,
                       addresses: Sequence[str]) -> dict[str, list[plan.Bar]]:
    """The BARs of ``addresses`` from the node's sysfs, over the inventory entry's SSH."""
    from gpuprov.inventory import resolve
    from gpuprov.transport import ssh

    client = ssh.connect(resolve(name, inventory))
    try:
        bars = {}
        for address in addresses:
            status, out, err = ssh.run(
                client, f"cat {shlex.quote(f'/sys/bus/pci/devices/{address}/resource')}",
                timeout=30)
            if status != 0:
                raise GpuprovError(f"reading the BARs of {address} failed: {err.strip()}")
            bars[address] = plan.parse_resource(out)
        return bars
    finally:
        client.close()


@dataclass
class MappingResult:
    host: str
    mappings: list[dict]
    created: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"host": self.host, "mappings": self.mappings, "created": self.created,
                "notes": self.notes}


class _Session:
    """One logged-in API session and the node the command works on."""

    def __init__(self, name: str, inventory: Path | None, report: Report) -> None:
        from gpuprov.inventory import host_vars

        self.settings: PveSettings = settings_from(name, host_vars(name, inventory), os.environ)
        self.report = report
        report(name, f"connecting to {self.settings.endpoint} as {self.settings.identity}")
        self.api = connect(self.settings)
        self.node = self.settings.node
        self.vm_nodes: dict[str, str] = {}  # vmid -> node, cluster-wide (filled by vm_configs)
        nodes = {entry["node"]: entry
                 for entry in self.call("listing the nodes", self.api.nodes.get)}
        self.node_entry = nodes.get(self.node, {})  # maxcpu, maxmem
        if self.node not in nodes:
            raise NotFoundError(f"Proxmox VE at {self.settings.endpoint} has no node "
                                f"{self.node!r}",
                                f"its nodes: {', '.join(sorted(nodes))}; set pve_node of "
                                f"{name} in the inventory")

    def call(self, what: str, function: Callable, *args, **kwargs):
        """``function(*args, **kwargs)`` with the API's refusal turned into a clear error."""
        from proxmoxer.core import ResourceException

        try:
            return function(*args, **kwargs)
        except ResourceException as error:
            detail = error.content or error.status_message
            if isinstance(error.errors, dict) and error.errors:  # per-parameter errors
                detail += ": " + "; ".join(f"{k}: {v}" for k, v in error.errors.items())
            raise ApiError(f"{what} failed: {self.settings.redact(str(detail).strip())} "
                           f"(HTTP {error.status_code})", _hint(error.status_code)) from None

    @property
    def qemu(self):
        return self.api.nodes(self.node).qemu

    def wait(self, upid: str, subject: str, what: str) -> str:
        """Wait for task ``upid``; its exit status, or TaskFailed with the end of its log."""
        tasks = self.api.nodes(self.node).tasks
        deadline, delay, shown = time.monotonic() + TASK_TIMEOUT, 0.05, False
        while True:
            status = self.call(f"{what} (task status)", tasks(upid).status.get)
            if status.get("status") == "stopped":
                break
            if not shown:
                self.report(subject, f"{what}: running")
                shown = True
            if time.monotonic() > deadline:
                raise TaskFailed(f"{what} on {subject} did not finish within "
                                 f"{TASK_TIMEOUT // 60} minutes (task {upid})",
                                 "see the task in the PVE GUI (Tasks) or: pvenode task log "
                                 + upid)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        exit_status = str(status.get("exitstatus", ""))
        if exit_status == "OK" or exit_status.startswith("WARNINGS"):
            self.report(subject, f"{what}: done" + ("" if exit_status == "OK"
                                                     else f" ({exit_status.lower()})"))
            return exit_status
        log = self.call(f"{what} (task log)", tasks(upid).log.get, limit=50)
        lines = "\n".join(f"  {entry.get('t', '')}" for entry in log)
        raise TaskFailed(self.settings.redact(f"{what} failed on {subject}: {exit_status}\n"
                                              f"task log ({upid}):\n{lines}"))

    def mappings(self) -> list[dict]:
        return self.call("listing the PCI resource mappings", self.api.cluster.mapping.pci.get)

    def vm_configs(self) -> dict[str, dict]:
        """Every VM on the node: vmid -> config (what the card may already be given to)."""
        resources = self.call("listing the VMs", self.api.cluster.resources.get, type="vm")
        self.vm_nodes = {str(vm["vmid"]): vm.get("node", "?") for vm in resources}
        return {str(vm["vmid"]): self.call(f"reading VM {vm['vmid']}'s config",
                                           self.qemu(vm["vmid"]).config.get)
                for vm in resources
                if vm.get("node") == self.node and vm.get("type", "qemu") == "qemu"}

    def card(self, selector: DeviceSelector) -> plan.Card:
        listing = self.call(f"listing node {self.node}'s PCI devices",
                            self.api.nodes(self.node).hardware.pci.get,
                            **{"pci-class-blacklist": ""})
        return plan.choose_card(selector, plan.pci_functions(listing), self.node)


def _hint(status: int) -> str | None:
    if status == 401:
        return "the login was refused: check the token or password"
    if status == 403:
        return "the API token or user lacks a privilege for this; see docs/proxmox.md"
    return None


def _check_request(request: PassthroughRequest) -> None:
    """What Proxmox VE would refuse, and flags of other backends, refused before connecting."""
    refuse_flags("Proxmox VE", ((
        request.hide_hypervisor or None, "--hide-hypervisor",
        "leave it out; if the card's driver refuses to run in a VM, hide KVM with the VM's "
        "cpu option: qm set VMID --cpu host,hidden=1"),))
    if request.vm is None:  # the shape is only used for a new VM
        if request.shape.name:
            plan.check_vm_name(request.shape.name)
        plan.check_memory(request.shape.memory_mib)
    if request.mapping is not None:
        plan.check_mapping_id(request.mapping)


class ProxmoxBackend:
    name = "proxmox"

    def __init__(self, read_bars: BarReader = read_bars_over_ssh) -> None:
        self.read_bars = read_bars

    def passthrough(self, request: PassthroughRequest, report: Report,
                    confirm: Confirm) -> PassthroughResult:
        _check_request(request)
        session = _Session(request.host, request.inventory, report)
        job = _Job(session, request, self.read_bars)
        return job.run(confirm)

    def mappings(self, host: str, inventory: Path | None, report: Report, *,
                 create: DeviceSelector | None = None, name: str | None = None) -> MappingResult:
        """The cluster's PCI resource mappings; with ``create``, map that card on the node."""
        session = _Session(host, inventory, report)
        result = MappingResult(host, session.mappings())
        if create is not None:
            card = session.card(create)
            chosen = name or plan.mapping_name(card)
            result.created, note = _ensure_mapping(session, card, chosen)
            result.notes.append(note)
            result.mappings = session.mappings()
        return result


def _ensure_mapping(session: _Session, card: plan.Card, name: str) -> tuple[str | None, str]:
    """Use mapping ``name`` if it maps this card on the node, else create it. Returns the name
    created (or None) and a note saying which."""
    existing = {m.name: m for m in plan.parse_mappings(session.mappings())}
    if name in existing:
        plan.check_mapping(existing[name], card, session.node)
        return None, f"PCI mapping {name!r} maps {card.hostpci_path} on {session.node}: used it"
    plan.check_mapping_id(name)
    entry = plan.mapping_entry(card, session.node)
    session.report(session.node, f"creating PCI mapping {name} ({entry})")
    session.call(f"creating PCI mapping {name!r} (needs Mapping.Modify on /mapping/pci)",
                 session.api.cluster.mapping.pci.post, id=name, map=[entry],
                 description=f"{card.display.name} (created by gpuprov)")
    return name, f"created PCI mapping {name!r}: {entry}"


class _Job:
    """One ``passthrough`` run: check, choose the path, size MMIO, create or attach, start."""

    def __init__(self, session: _Session, request: PassthroughRequest,
                 read_bars: BarReader) -> None:
        self.session, self.request, self.read_bars = session, request, read_bars
        self.notes: list[str] = []

    def run(self, confirm: Confirm) -> PassthroughResult:
        session, request = self.session, self.request
        card = session.card(request.gpu)
        configs = session.vm_configs()
        existing = self._existing_vm(configs)
        users = plan.hostpci_users(card, session.node, configs,
                                   plan.parse_mappings(session.mappings()))
        plan.check_free(card, session.node, users, existing)
        if existing is not None:
            return self._attach(int(existing), configs[existing], card, confirm)
        taken_on = session.vm_nodes.get(str(request.vmid))
        if taken_on is not None:
            raise plan.ProxmoxRefused(f"VM {request.vmid} already exists on node {taken_on}",
                                      "give a free --vmid, or auto for the next free one")
        # nextid with a vmid says whether that id is free in the whole cluster
        plan.check_fits_node(request.shape.cores, request.shape.memory_mib, session.node,
                             session.node_entry)
        vmid = int(session.call("choosing a VM id", session.api.cluster.nextid.get,
                                **({"vmid": request.vmid} if request.vmid else {})))
        return self._create(vmid, card)

    def _hostpci(self, card: plan.Card) -> str:
        return plan.hostpci_value(card, mapping=self._mapping(card), x_vga=self.request.x_vga)

    def _existing_vm(self, configs: Mapping[str, Mapping]) -> str | None:
        """The VM id the request names, if that VM exists: ``--vm`` (id or name) must; a
        ``--vmid`` may (then it is created)."""
        if self.request.vmid is not None:
            return str(self.request.vmid) if str(self.request.vmid) in configs else None
        wanted = self.request.vm
        if wanted is None:
            return None
        if wanted in configs:
            return wanted
        named = [vmid for vmid, config in configs.items() if config.get("name") == wanted]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise plan.ProxmoxRefused(f"{len(named)} VMs on node {self.session.node} are named "
                                      f"{wanted!r}: {', '.join(sorted(named))}",
                                      "name the VM by its id: --vm VMID")
        raise NotFoundError(f"node {self.session.node} has no VM {wanted!r}",
                            "list them with: qm list (on the node), or leave out --vm to "
                            "create one")

    def _mapping(self, card: plan.Card) -> str | None:
        """The mapping to use, or None for the raw address; notes which path and why."""
        settings = self.session.settings
        raw_allowed = plan.may_use_raw_address(settings.user, settings.is_token)
        if self.request.mapping is None and raw_allowed:
            self.notes.append(f"raw address: {settings.identity} logs in with a root@pam "
                              f"password, which may give host={card.hostpci_path} directly")
            return None
        name = self.request.mapping or plan.mapping_name(card)
        if self.request.mapping is None:
            self.notes.append(f"PCI resource mapping: Proxmox VE lets only a root@pam password "
                              f"login set raw host= devices, and {settings.identity} is an "
                              + ("API token" if settings.is_token else "other user"))
        _, note = _ensure_mapping(self.session, card, name)
        self.notes.append(note)
        return name

    def _mmio(self, card: plan.Card, config: Mapping[str, str]) -> plan.MmioPlan:
        settings = self.session.settings
        try:
            bars = self.read_bars(self.request.host, self.request.inventory, card.addresses)
        except GpuprovError as error:
            self.notes.append(f"64-bit MMIO window left at OVMF's default: the card's BARs could "
                              f"not be read on the node ({error.message}); if the guest logs "
                              "'BAR0 is 0M', run this again where SSH to the node works")
            return plan.MmioPlan(0)
        mmio = plan.plan_mmio(bars, raw_allowed=plan.may_use_raw_address(
            settings.user, settings.is_token), cpu=str(config.get("cpu", "host")),
            args=config.get("args"))
        self.notes.append(f"64-bit MMIO: {mmio.explanation}")
        return mmio

    def _storage(self) -> str:
        session = self.session
        storages = session.call("listing storages", session.api.nodes(session.node).storage.get,
                                content="images")
        names = [s["storage"] for s in storages if s.get("active", 1)]
        wanted = self.request.shape.storage
        if wanted is not None:
            if wanted not in names:
                raise NotFoundError(f"node {session.node} has no active storage {wanted!r} for "
                                    "VM disks", f"its VM storages: {', '.join(names) or 'none'}")
            return wanted
        if not names:
            raise NotFoundError(f"node {session.node} has no active storage for VM disks",
                                "add one, or give --storage")
        return "local-lvm" if "local-lvm" in names else names[0]

    def _create(self, vmid: int, card: plan.Card) -> PassthroughResult:
        session, shape = self.session, self.request.shape
        storage = self._storage()
        mmio = self._mmio(card, {})
        hostpci = self._hostpci(card)
        vm = plan.NewVm(vmid=vmid, name=shape.name or plan.mapping_name(card),
                        cores=shape.cores, memory_mib=shape.memory_mib, disk_gib=shape.disk_gib,
                        storage=storage, bridge=self.request.options.get("bridge", "vmbr0"),
                        iso=shape.iso)
        params = plan.create_params(vm, hostpci, mmio)
        subject = f"VM {vmid}"
        upid = session.call(f"creating VM {vmid}", session.qemu.post, **params)
        try:
            session.wait(upid, subject, "creating the VM")
            started = self._start(vmid)
        except GpuprovError as error:
            self._discard(vmid, error)
            raise
        return self._result(vmid, created=True, started=started)

    def _attach(self, vmid: int, config: Mapping[str, str], card: plan.Card,
                confirm: Confirm) -> PassthroughResult:
        session, subject = self.session, f"VM {vmid}"
        status = session.call(f"reading VM {vmid}'s state",
                              session.qemu(vmid).status.current.get)
        if status.get("status") != "stopped":
            raise plan.ProxmoxRefused(f"VM {vmid} is {status.get('status')}: a PCI device is "
                                      "only added to a stopped VM (it takes effect on a cold "
                                      "start)", f"shut it down first: qm shutdown {vmid}")
        changes = plan.conversion(config, self._storage() if "efidisk0" not in config else "")
        if changes and not confirm(f"convert VM {vmid} ({config.get('name', '')}) for "
                                   "passthrough", plan.describe_conversion(config, changes)):
            raise NotConfirmed(
                f"VM {vmid} must change before it can take the card: "
                + "; ".join(plan.describe_conversion(config, changes)),
                "run again with --convert to change it (nothing was changed)")
        key = plan.free_hostpci_key(config)
        mmio = self._mmio(card, config)
        params = {**changes, key: self._hostpci(card), **mmio.changes}
        upid = session.call(f"changing VM {vmid}", session.qemu(vmid).config.post,
                            digest=config.get("digest"), **params)
        try:
            session.wait(upid, subject, f"adding the card as {key}")
            started = self._start(vmid)
        except GpuprovError:
            undo = plan.undo_params(config, params)
            session.report(subject, "failed: putting the VM's config back")
            session.call(f"restoring VM {vmid}'s config", session.qemu(vmid).config.put, **undo)
            raise
        if changes:
            self.notes.append(f"converted VM {vmid}: {', '.join(changes)}")
        return self._result(vmid, created=False, started=started)

    def _start(self, vmid: int) -> bool:
        if not self.request.start:
            return False
        session = self.session
        upid = session.call(f"starting VM {vmid}", session.qemu(vmid).status.start.post)
        session.wait(upid, f"VM {vmid}", "starting the VM")
        return True

    def _discard(self, vmid: int, error: GpuprovError) -> None:
        """Remove the VM this run created. The run's own error stays the one reported: a
        create task can fail before the VM exists (a missing ISO), and a failed cleanup is
        added to the error, not put in its place."""
        session, subject = self.session, f"VM {vmid}"
        listed = session.call("listing the node's VMs", session.qemu.get)
        if str(vmid) not in {str(entry.get("vmid")) for entry in listed}:
            session.report(subject, "failed before the VM existed: nothing to remove")
            return
        if self.request.keep_on_failure:
            session.report(subject, "failed: kept for debugging (--keep-on-failure)")
            return
        session.report(subject, f"failed ({type(error).__name__}): removing the new VM")
        try:
            status = session.call(f"reading VM {vmid}'s state",
                                  session.qemu(vmid).status.current.get)
            if status.get("status") == "running":
                session.wait(session.call(f"stopping VM {vmid}",
                                          session.qemu(vmid).status.stop.post),
                             subject, "stopping the VM")
            upid = session.call(f"removing VM {vmid}", session.qemu(vmid).delete,
                                purge=1, **{"destroy-unreferenced-disks": 1})
            session.wait(upid, subject, "removing the VM")
        except GpuprovError as cleanup:
            error.message += f"\n  and removing the half-made VM {vmid} failed: {cleanup.message}"
            error.hint = f"remove it by hand on node {session.node}: qm destroy {vmid} --purge"

    def _result(self, vmid: int, *, created: bool, started: bool) -> PassthroughResult:
        """What the VM is now, read back from Proxmox VE."""
        session = self.session
        config = session.call(f"reading VM {vmid}'s config", session.qemu(vmid).config.get)
        status = session.call(f"reading VM {vmid}'s state", session.qemu(vmid).status.current.get)
        devices = [f"{key}: {value}" for key, value in sorted(config.items())
                   if re.fullmatch(r"hostpci\d+", key)]
        return PassthroughResult(
            hypervisor="proxmox", host=session.node, vm_id=str(vmid),
            vm_name=str(config.get("name", "")), created=created,
            started=started and status.get("status") == "running", devices=devices,
            settings={key: str(config[key]) for key in SHOWN_SETTINGS if key in config},
            notes=self.notes)


def backend() -> ProxmoxBackend:
    return ProxmoxBackend()
