"""libvirt (plain KVM hosts): passthrough VMs defined with ``virsh`` over one SSH session.

inspect the host (the host stage's verdict must be "ready": IOMMU on, every function of the
card on vfio-pci, its group clean) -> install libvirt through ``playbooks/libvirt_host.yml`` if
missing -> check the card is free and the VM's parts exist -> define the domain (or add the
card to an existing one) -> start -> read the domain XML back. The XML and every decision about
it are pure, in ``gpuprov.plan.libvirt``; this module only runs commands.
"""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path

import paramiko

from gpuprov import inventory as inventory_
from gpuprov.errors import (
    GpuprovError,
    HostUnreachable,
    NotConfirmed,
    NotFoundError,
    UsageError,
)
from gpuprov.hypervisors.base import (
    Confirm,
    PassthroughRequest,
    PassthroughResult,
    Report,
    refuse_flags,
)
from gpuprov.plan import libvirt as plan
from gpuprov.transport import ssh

VIRSH = "virsh -c qemu:///system"
PLAYBOOK = "libvirt_host.yml"
OPTIONS = {
    "kernel": "direct kernel boot: a kernel image on the host",
    "initrd": "with kernel: its initramfs on the host",
    "cmdline": "with kernel: its command line",
    "network": "a libvirt network for the NIC (default: 'default' when it is active)",
    "bridge": "a host bridge for the NIC instead of a libvirt network",
}


class LibvirtFailed(GpuprovError):
    """A command on the libvirt host failed (exit 1)."""


class _Host:
    """One SSH session to the host; every command runs as root (through sudo -n otherwise)."""

    def __init__(self, name: str, inventory: Path | None) -> None:
        self.name = name
        target = inventory_.resolve(name, inventory)
        try:
            self.client = ssh.connect(target)
        except ssh.SshUnavailable as error:
            raise HostUnreachable(
                f"cannot reach {name} over SSH ({target.user}@{target.host}:{target.port}): "
                f"{error.__cause__ or error.message}",
                f"check that {name} is up and the key is accepted") from error
        self.sudo = "" if target.user == "root" else "sudo -n "

    def run(self, command: str, what: str, *, timeout: float = 300, stdin: str | None = None,
            check: bool = True) -> tuple[int, str]:
        try:
            status, out, err = ssh.run(self.client, self.sudo + "sh -c " + shlex.quote(command),
                                       timeout=timeout, stdin=stdin)
        except (OSError, paramiko.SSHException) as error:
            raise HostUnreachable(f"the SSH session to {self.name} broke while {what}: "
                                  f"{error}") from error
        if check and status != 0:
            detail = (err.strip().splitlines() or [f"exit status {status}"])[-1]
            raise LibvirtFailed(f"{what} failed on {self.name}: {detail}")
        return status, out

    def virsh(self, arguments: str, what: str, **kwargs) -> str:
        return self.run(f"{VIRSH} {arguments}", what, **kwargs)[1]

    def succeeds(self, command: str) -> bool:
        return self.run(command, command, check=False)[0] == 0

    def close(self) -> None:
        self.client.close()


class LibvirtBackend:
    name = "libvirt"

    def passthrough(self, request: PassthroughRequest, report: Report,
                    confirm: Confirm) -> PassthroughResult:
        _check_request(request)
        functions = _ready_card(request, report)
        host = _Host(request.host, request.inventory)
        try:
            _ensure_libvirt(host, request, report)
            return _Job(host, request, functions, report).run(confirm)
        finally:
            host.close()


def _check_request(request: PassthroughRequest) -> None:
    """Flags of other backends are refused, not silently ignored."""
    refuse_flags("libvirt", (
        (request.vmid, "--vmid", "use --vm NAME for an existing domain, --name for a new one"),
        (request.mapping, "--mapping", "use nothing: libvirt has no PCI resource mappings"),
        (request.x_vga or None, "--x-vga",
         "use nothing: the card is the VM's only display already")))
    unknown = sorted(set(request.options) - set(OPTIONS))
    if unknown:
        raise UsageError(f"unknown libvirt option {', '.join(unknown)}",
                         "libvirt takes: " + "; ".join(f"{k} ({v})" for k, v in OPTIONS.items()))
    if request.options.get("network") and request.options.get("bridge"):
        raise UsageError("network and bridge both set the VM's NIC", "give one of them")
    if request.shape.name:
        plan.check_name(request.shape.name)


def _ready_card(request: PassthroughRequest, report: Report) -> tuple[str, ...]:
    """The card's functions to pass through, once the host stage's verdict says it may be."""
    from gpuprov.plan.verdict import READY
    from gpuprov.stages import inspect

    report(request.host, "inspecting IOMMU, vfio binding and groups")
    result = inspect.run(request.host, inventory=request.inventory, gpus=[str(request.gpu)])
    (verdict,) = result.verdicts
    slot = verdict.gpu.slot
    if verdict.status != READY:
        reasons = [r.reason for r in verdict.refusals] or list(verdict.missing)
        raise plan.LibvirtRefused(
            f"{slot} on {request.host} is not ready for passthrough ({verdict.status}): "
            + "; ".join(reasons),
            f"gpuprov host setup {request.host} --gpu {slot} isolates it (see gpuprov host "
            f"inspect {request.host})")
    return tuple(a for a in verdict.gpu.addresses if request.gpu.matches(a))


def _ensure_libvirt(host: _Host, request: PassthroughRequest, report: Report) -> None:
    if host.succeeds(f"{VIRSH} domcapabilities --machine q35 --arch x86_64 >/dev/null"):
        return
    from gpuprov.transport.ansible import run_playbook

    report(host.name, f"libvirt is missing: installing it (playbooks/{PLAYBOOK})")
    result = run_playbook(PLAYBOOK, inventory=request.inventory or inventory_.default_inventory(),
                          limit=host.name, extravars={},
                          report=lambda _host, task: report(host.name, task))
    if result.failures:
        raise LibvirtFailed(f"installing libvirt on {host.name} failed: {result.failures[0]}",
                            f"run it yourself to see all: ansible-playbook playbooks/{PLAYBOOK} "
                            f"-l {host.name}")


class _Job:
    """One ``passthrough`` run on a host with libvirt."""

    def __init__(self, host: _Host, request: PassthroughRequest, functions: tuple[str, ...],
                 report: Report) -> None:
        self.host, self.request, self.functions, self.report = host, request, functions, report
        self.notes: list[str] = []

    def run(self, confirm: Confirm) -> PassthroughResult:
        names = self.host.virsh("list --all --name", "listing domains").split()
        domains = {name: self.host.virsh(f"dumpxml {shlex.quote(name)}", f"reading {name}")
                   for name in names}
        users = plan.card_users(self.functions, domains)
        plan.check_free(users, self.request.vm)
        if self.request.vm is not None:
            if self.request.vm not in names:
                raise NotFoundError(f"{self.host.name} has no libvirt domain "
                                    f"{self.request.vm!r}",
                                    f"its domains: {', '.join(names) or 'none'}")
            return self._attach(self.request.vm, confirm)
        return self._create(names)

    # --- a new domain -------------------------------------------------------------------

    def _create(self, existing: list[str]) -> PassthroughResult:
        request, shape, host = self.request, self.request.shape, self.host
        name = shape.name or plan.default_name(self.functions)
        if name in existing:
            raise plan.LibvirtRefused(f"a domain named {name} already exists on {host.name}",
                                      f"give --vm {name} to add the card to it, or another "
                                      "--name")
        domain = plan.NewDomain(
            name=name, domain_type=self._domain_type(), memory_mib=shape.memory_mib,
            cores=shape.cores, functions=self.functions,
            console_log=f"/var/log/libvirt/qemu/{name}-console.log",
            iso=self._readable(shape.iso, "--iso"),
            kernel=self._readable(request.options.get("kernel"), "kernel"),
            initrd=self._readable(request.options.get("initrd"), "initrd"),
            cmdline=request.options.get("cmdline"),
            hide_hypervisor=request.hide_hypervisor, **self._nic())
        pool = shape.storage or "default"
        self._check_pool(pool)
        self._check_memory(name, shape.memory_mib)
        volume = f"{name}.qcow2"
        self.report(host.name, f"creating disk {pool}/{volume} ({shape.disk_gib} GiB, thin)")
        host.virsh(f"vol-create-as {shlex.quote(pool)} {shlex.quote(volume)} "
                   f"{shape.disk_gib}G --format qcow2", f"creating volume {volume}")
        try:
            disk = host.virsh(f"vol-path --pool {shlex.quote(pool)} {shlex.quote(volume)}",
                              f"locating volume {volume}").strip()
            self._define(name, plan.new_domain_xml(replace(domain, disk=disk)))
            started = self._start(name)
        except GpuprovError:
            if request.keep_on_failure:
                self.report(host.name, f"kept the half-made domain {name} (--keep-on-failure)")
            else:
                self._remove(name, pool, volume)
            raise
        return self._result(name, created=True, started=started)

    def _domain_type(self) -> str:
        if self.host.succeeds(f"test -c /dev/kvm && {VIRSH} domcapabilities --virttype kvm "
                              "--machine q35 --arch x86_64 >/dev/null"):
            return "kvm"
        self.notes.append(f"{self.host.name} has no usable KVM (/dev/kvm): the VM runs under "
                          "software emulation (domain type qemu), which is slow")
        return "qemu"

    def _readable(self, path: str | None, what: str) -> str | None:
        if path and not self.host.succeeds(f"test -r {shlex.quote(path)}"):
            raise NotFoundError(f"{what} {path} is not a readable file on {self.host.name}",
                                "give a path on the host, where libvirt runs")
        return path

    def _nic(self) -> dict[str, str | None]:
        options = self.request.options
        if options.get("bridge"):
            return {"bridge": options["bridge"], "network": None}
        network = options.get("network") or "default"
        info = self.host.run(f"{VIRSH} net-info {shlex.quote(network)}", "", check=False)[1]
        if "Active:" in info and "yes" in info.split("Active:")[1].splitlines()[0]:
            return {"network": network, "bridge": None}
        if options.get("network"):
            raise plan.LibvirtRefused(f"libvirt network {network!r} is not active on "
                                      f"{self.host.name}",
                                      f"start it (virsh net-start {network}) or give another")
        self.notes.append("no NIC: libvirt network 'default' is not active; give "
                          "-o network=NAME or -o bridge=BRIDGE for one")
        return {"network": None, "bridge": None}

    def _check_pool(self, pool: str) -> None:
        status, info = self.host.run(f"{VIRSH} pool-info {shlex.quote(pool)}", "", check=False)
        if status != 0 or "running" not in info:
            raise plan.LibvirtRefused(f"libvirt storage pool {pool!r} is not running on "
                                      f"{self.host.name}",
                                      "give an active pool with --storage (virsh pool-list), "
                                      f"or run playbooks/{PLAYBOOK}, which makes 'default'")

    def _check_memory(self, name: str, memory_mib: int) -> None:
        """Before anything is defined: a domain that is to start must fit in locked RAM."""
        if self.request.start:
            meminfo = self.host.run("cat /proc/meminfo", "reading the host's memory")[1]
            plan.check_memory(meminfo, memory_mib, host=self.host.name, domain=name)

    def _remove(self, name: str, pool: str, volume: str) -> None:
        self.report(self.host.name, f"removing the half-made domain {name}")
        self.host.run(f"{VIRSH} destroy {shlex.quote(name)}", "", check=False)
        self.host.run(f"{VIRSH} undefine --nvram {shlex.quote(name)}", "", check=False)
        self.host.run(f"{VIRSH} vol-delete --pool {shlex.quote(pool)} {shlex.quote(volume)}",
                      "", check=False)

    # --- an existing domain -------------------------------------------------------------

    def _attach(self, name: str, confirm: Confirm) -> PassthroughResult:
        host = self.host
        state = host.virsh(f"domstate {shlex.quote(name)}", f"reading the state of {name}")
        if state.strip() != "shut off":
            raise plan.LibvirtRefused(f"domain {name} is {state.strip()}",
                                      f"shut it down first: virsh shutdown {name}")
        before = host.virsh(f"dumpxml --inactive --security-info {shlex.quote(name)}",
                            f"reading {name}")
        after, conversions = plan.attach_xml(before, self.functions)
        self._check_memory(name, plan.domain_memory_mib(plan.parse_domain(after)))
        if conversions and not confirm(f"convert domain {name} for passthrough", conversions):
            raise NotConfirmed(
                f"domain {name} must change for passthrough: {'; '.join(conversions)}",
                "run again with --convert to change it (nothing was changed)")
        try:
            self._define(name, after)
            started = self._start(name)
        except GpuprovError:
            self.report(host.name, f"putting domain {name}'s previous definition back")
            self.host.run(f"{VIRSH} destroy {shlex.quote(name)}", "", check=False)
            self._define(name, before)
            raise
        if conversions:
            self.notes.append(f"converted domain {name}: {'; '.join(conversions)}")
        return self._result(name, created=False, started=started)

    # --- shared -------------------------------------------------------------------------

    def _define(self, name: str, xml_text: str) -> None:
        self.report(self.host.name, f"defining domain {name}")
        self.host.run(f'f=$(mktemp) && cat > "$f" && {VIRSH} define "$f"; s=$?; rm -f "$f"; '
                      "exit $s", f"defining domain {name}", stdin=xml_text)

    def _start(self, name: str) -> bool:
        if not self.request.start:
            return False
        self.report(self.host.name, f"starting domain {name}")
        self.host.virsh(f"start {shlex.quote(name)}", f"starting domain {name}")
        return True

    def _result(self, name: str, *, created: bool, started: bool) -> PassthroughResult:
        xml_text = self.host.virsh(f"dumpxml {shlex.quote(name)}", f"reading {name} back")
        settings = plan.domain_settings(xml_text)
        uuid = self.host.virsh(f"domuuid {shlex.quote(name)}", f"reading {name}'s uuid").strip()
        if "console_log" in settings:
            self.notes.append(f"the VM's serial console is logged on {self.host.name} in "
                              f"{settings['console_log']}; attach with: virsh console {name}")
        return PassthroughResult(
            hypervisor="libvirt", host=self.host.name, vm_id=uuid, vm_name=name,
            created=created, started=started,
            devices=[f"hostdev {a} (managed=no)" for a in plan.hostdev_sources(
                plan.parse_domain(xml_text))],
            settings=settings, notes=self.notes)


def backend() -> LibvirtBackend:
    return LibvirtBackend()
