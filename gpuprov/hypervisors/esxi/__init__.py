"""VMware ESXi and vCenter: DirectPath passthrough VMs through the vSphere API (pyVmomi).

``passthrough`` gives a card that is active for passthrough to a new or an existing VM: EFI,
secure boot off, all memory reserved, a 64-bit MMIO window sized from the card, the device as
static DirectPath or Dynamic DirectPath. ``host_devices`` lists a host's PCI devices with their
passthrough state, enables a card (with its sibling functions) and, when asked and confirmed,
reboots the host through maintenance mode so the change takes effect.

Nothing half-done stays behind: a VM created here is destroyed if a later step fails (unless
``keep_on_failure``), an existing VM gets its previous settings and devices back.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gpuprov.errors import NotConfirmed
from gpuprov.facts.pci import DeviceSelector
from gpuprov.hypervisors.base import (
    Confirm,
    PassthroughRequest,
    PassthroughResult,
    Report,
    refuse_flags,
)
from gpuprov.hypervisors.esxi import vsphere
from gpuprov.hypervisors.esxi.connection import VsphereSettings, connect, settings_from
from gpuprov.plan import esxi as plan

DEFAULT_GUEST = "otherLinux64Guest"
REBOOT_TIMEOUT = 1800  # seconds; a server with many PCIe devices can take 15 minutes to POST


@dataclass
class HostDevicesResult:
    hypervisor: str
    host: str  # the ESXi host, as vSphere names it
    functions: list[plan.PciFunction]
    reboot_needed: list[str]
    changed: list[str] = field(default_factory=list)
    rebooted: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"hypervisor": self.hypervisor, "host": self.host,
                "devices": [f.to_json() for f in self.functions],
                "reboot_needed": self.reboot_needed, "changed": self.changed,
                "rebooted": self.rebooted, "notes": self.notes}


class _Connection:
    """One logged-in session for one command; logged out however the command ends."""

    def __init__(self, name: str, inventory: Path | None, report: Report) -> None:
        from gpuprov.inventory import host_vars

        self.variables = host_vars(name, inventory)
        self.settings: VsphereSettings = settings_from(name, self.variables, os.environ)
        report(name, f"connecting to {self.settings.endpoint} as {self.settings.user}")
        self.si = connect(self.settings)
        self.content = self.si.RetrieveContent()

    def options(self, given: Mapping[str, str]) -> dict[str, str]:
        """--option wins over the host's vsphere_datacenter, _cluster and _esx_host vars."""
        merged = {key: str(self.variables[f"vsphere_{key}"])
                  for key in ("datacenter", "cluster", "esx_host")
                  if self.variables.get(f"vsphere_{key}")}
        return {**merged, **given}

    def reconnect(self) -> None:
        self.si = connect(self.settings)
        self.content = self.si.RetrieveContent()

    def __enter__(self) -> _Connection:
        return self

    def __exit__(self, *exc) -> None:
        from pyVim.connect import Disconnect

        # The host may be rebooting or gone; the session dies with it.
        with contextlib.suppress(Exception):
            Disconnect(self.si)


def _check_request(request: PassthroughRequest) -> None:
    """What vSphere would refuse, and flags of other backends, refused before connecting."""
    refuse_flags("ESXi", (
        (request.vmid, "--vmid", "use --vm NAME for an existing VM, --name for a new one"),
        (request.mapping, "--mapping", "use nothing: PCI resource mappings are Proxmox VE's")))
    if request.vm is None:  # the shape is only used for a new VM
        plan.check_shape(request.shape.name, request.shape.cores, request.shape.memory_mib)


class EsxiBackend:
    name = "esxi"

    def passthrough(self, request: PassthroughRequest, report: Report,
                    confirm: Confirm) -> PassthroughResult:
        _check_request(request)
        with _Connection(request.host, request.inventory, report) as conn:
            options = conn.options(request.options)
            host = vsphere.select_host(conn.content, options, request.host, request.vm)
            functions = vsphere.pci_functions(host)
            target = _target(request.host, host, conn)
            chosen = plan.card_functions(request.gpu, functions, host.name, target)
            plan.check_usable(chosen, host.name, target)
            override = options.get("gpu_memory")
            memory = [plan.gpu_memory_gib(f.ids, _gib(override)) for f in chosen if f.is_display]
            job = _Job(conn, host, request, report, options)
            if request.vm is not None:
                return job.attach(chosen, functions, memory, confirm)
            return job.create(chosen, memory)

    def host_devices(self, name: str, inventory: Path | None, options: Mapping[str, str],
                     report: Report, confirm: Confirm, *, enable: DeviceSelector | None = None,
                     reboot: bool = False) -> HostDevicesResult:
        """The host's PCI devices; with ``enable``, switch that card's functions to passthrough;
        with ``reboot``, reboot the host (maintenance mode, confirmed) if a change waits for it."""
        with _Connection(name, inventory, report) as conn:
            options = conn.options(options)
            host = vsphere.select_host(conn.content, options, name)
            functions = vsphere.pci_functions(host)
            result = HostDevicesResult("esxi", host.name, functions, [])
            if enable is not None:
                chosen = plan.card_functions(enable, functions, host.name,
                                             _target(name, host, conn))
                steps = plan.plan_enable(chosen, functions, host.name)
                if steps.enable:
                    report(host.name, f"enabling passthrough on {', '.join(steps.enable)}")
                    vsphere.enable_passthrough(host, steps.enable)
                    result.changed = list(steps.enable)
                if steps.already:
                    result.notes.append(f"already enabled: {', '.join(steps.already)}")
                result.functions = vsphere.pci_functions(host)
            result.reboot_needed = plan.reboot_needed(result.functions)
            if reboot and result.reboot_needed:
                host = _reboot(conn, host, result.reboot_needed, report, confirm)
                result.rebooted = True
                result.functions = vsphere.pci_functions(host)
                result.reboot_needed = plan.reboot_needed(result.functions)
            elif reboot:
                result.notes.append("no reboot needed: every passthrough setting is in effect")
            if result.reboot_needed:
                result.notes.append(
                    f"host {host.name} needs a reboot before passthrough changes on "
                    f"{', '.join(result.reboot_needed)} take effect; reboot it with --reboot "
                    "(it enters maintenance mode first)")
            return result


def _target(name: str, host, conn: _Connection) -> str:
    """How a hint names this ESXi host on the command line: the inventory entry, and on a
    vCenter the host among the ones it manages."""
    standalone = conn.content.about.apiType == "HostAgent"
    return f"--host {name}" + ("" if standalone else f" -o esx_host={host.name}")


def _gib(text: str | None) -> float | None:
    if text is None:
        return None
    from gpuprov.units import parse_size

    return parse_size(text, default_unit="G", what="gpu_memory") / 2**30


def _reboot(conn: _Connection, host, devices: list[str], report: Report, confirm: Confirm):
    """Maintenance mode, reboot, wait for the host to come back, leave maintenance mode."""
    running = [vm.name for vm in host.vm
               if vm.runtime.powerState == "poweredOn"]
    if running:
        raise plan.EsxiRefused(
            f"host {host.name} runs VMs: {', '.join(sorted(running))}; maintenance mode "
            "waits until none runs on it",
            "shut them down (or migrate them) and run this again")
    if not confirm(f"put host {host.name} into maintenance mode and reboot it",
                   [f"passthrough change waiting on {d}" for d in devices]):
        raise NotConfirmed(f"rebooting host {host.name} was not confirmed",
                         "add --yes to reboot without asking")
    redact = conn.settings.redact
    if not host.runtime.inMaintenanceMode:
        vsphere.wait(host.EnterMaintenanceMode_Task(timeout=0), report, host.name,
                     "entering maintenance mode", redact)
    booted = host.runtime.bootTime
    vsphere.wait(host.RebootHost_Task(force=False), report, host.name, "rebooting", redact)
    name, deadline = host.name, time.monotonic() + REBOOT_TIMEOUT
    while True:
        try:
            if (host.runtime.connectionState == "connected"
                    and host.runtime.bootTime != booted):
                break
        except Exception:  # hostd is down while the host reboots: log in again once it is back
            try:
                conn.reconnect()
                host = vsphere.select_host(conn.content, {"esx_host": name}, conn.settings.name)
            except Exception:
                pass
        if time.monotonic() > deadline:
            raise vsphere.TaskFailed(f"host {name} did not come back within "
                                     f"{REBOOT_TIMEOUT // 60} minutes of its reboot",
                                     "check its console; it is still in maintenance mode")
        report(name, "waiting for the host to come back")
        time.sleep(5)
    vsphere.wait(host.ExitMaintenanceMode_Task(timeout=0), report, name,
                 "leaving maintenance mode", redact)
    return host


class _Job:
    """One ``passthrough`` run on one host: create or attach, start, read back, or undo."""

    def __init__(self, conn: _Connection, host, request: PassthroughRequest, report: Report,
                 options: Mapping[str, str]) -> None:
        self.conn, self.host, self.request, self.report = conn, host, request, report
        self.options = options
        self.redact = conn.settings.redact
        self.notes: list[str] = []

    def _warn_memory(self, vm: str, memory_mib: int, gpu_memory_gib: list[float]) -> None:
        warning = plan.memory_warning(vm, memory_mib, gpu_memory_gib)
        if warning:
            self.report(vm, warning)
            self.notes.append(warning)

    def _wait(self, task, subject: str, what: str):
        return vsphere.wait(task, self.report, subject, what, self.redact)

    def _devices(self, vm, chosen: list[plan.PciFunction]) -> list:
        static, dynamic = vsphere.config_target(self.host.parent, self.host)
        version = vsphere.hardware_version(vm)
        backing = plan.choose_backing(version, all(f.ids in dynamic for f in chosen),
                                      all(f.address in static for f in chosen),
                                      self.options.get("directpath", "auto"))
        self.notes.append(
            f"{'Dynamic DirectPath' if backing == 'dynamic' else 'DirectPath (static)'}: "
            f"hardware version {version}, host offers dynamic for "
            f"{', '.join(sorted(dynamic)) or 'nothing'}")
        return [vsphere.passthrough_device(f, backing, static.get(f.address), -200 - i)
                for i, f in enumerate(chosen)]

    def _start(self, vm) -> bool:
        if not self.request.start:
            return False
        self._wait(vm.PowerOnVM_Task(), vm.name, "powering on")
        return True

    def _result(self, vm, created: bool, started: bool) -> PassthroughResult:
        settings = vsphere.read_settings(vm).to_json()
        settings["memory_mb"] = str(vm.config.hardware.memoryMB)
        settings["hardware_version"] = vm.config.version
        if self.request.hide_hypervisor:
            self.notes.append("hypervisor.cpuid.v0=FALSE hides the hypervisor from the guest "
                              "(for consumer cards; it can break vSphere 7 guests)")
        return PassthroughResult(
            hypervisor="esxi", host=self.host.name, vm_id=vm._moId, vm_name=vm.name,
            created=created, started=started,
            devices=[vsphere.describe_device(d) for d in vsphere.passthrough_devices(vm)],
            settings=settings, notes=self.notes)

    def create(self, chosen: list[plan.PciFunction], memory: list[float]) -> PassthroughResult:
        from pyVmomi import vim

        shape, host = self.request.shape, self.host
        name = shape.name or "gpu-" + chosen[0].address.replace(":", "-").replace(".", "-")
        datacenter = vsphere.datacenter_of(host)
        if vsphere.find_vms(self.conn.content, [datacenter], name):
            raise plan.EsxiRefused(f"a VM named {name} already exists in {datacenter.name}",
                                   "give another --name, or --vm to give it the card")
        datastore = vsphere.pick_datastore(host, shape.storage)
        mmio = plan.mmio_size_gib(memory)
        self._warn_memory(name, shape.memory_mib, memory)
        desired = plan.desired_settings(plan.VmSettings(), mmio, self.request.hide_hypervisor)
        spec = vim.vm.ConfigSpec(
            name=name, guestId=self.options.get("guest_id", DEFAULT_GUEST),
            numCPUs=shape.cores, memoryMB=shape.memory_mib,
            files=vim.vm.FileInfo(vmPathName=f"[{datastore}]"),
            deviceChange=vsphere.new_vm_devices(host, shape, datastore, self.options))
        vsphere.apply_changes(spec, plan.plan_new(desired))
        vm = self._wait(datacenter.vmFolder.CreateVM_Task(
            config=spec, pool=host.parent.resourcePool, host=host), name, "creating the VM")
        try:
            change = vim.vm.ConfigSpec(deviceChange=self._devices(vm, chosen))
            self._wait(vm.ReconfigVM_Task(spec=change), name, "adding the GPU")
            started = self._start(vm)
            return self._result(vm, created=True, started=started)
        except Exception as error:
            self._discard(vm, error)
            raise

    def _discard(self, vm, error: Exception) -> None:
        name = vm.name  # read once: once Destroy_Task runs, the VM's properties are gone
        if self.request.keep_on_failure:
            self.report(name, "failed: kept for debugging (--keep-on-failure)")
            return
        self.report(name, f"failed ({type(error).__name__}): removing the new VM")
        if vm.runtime.powerState != "poweredOff":
            self._wait(vm.PowerOffVM_Task(), name, "powering off")
        self._wait(vm.Destroy_Task(), name, "removing the VM")

    def attach(self, chosen: list[plan.PciFunction], functions: list[plan.PciFunction],
               memory: list[float], confirm: Confirm) -> PassthroughResult:
        from pyVmomi import vim

        content, host = self.conn.content, self.host
        vms = vsphere.find_vms(content, [vsphere.datacenter_of(host)], self.request.vm)
        if len(vms) != 1:
            raise plan.EsxiRefused(
                f"{'no' if not vms else len(vms)} VMs named {self.request.vm!r} in "
                f"{vsphere.datacenter_of(host).name}",
                "name the VM by its id (vm-42) instead" if vms else
                "check the name, or leave out --vm to create one")
        vm = vms[0]
        if vm.runtime.host != host:
            raise plan.EsxiRefused(f"VM {vm.name} is registered on {vm.runtime.host.name}, not "
                                   f"on {host.name} where the card is",
                                   "move it to that host first, or choose its host with "
                                   "--option esx_host=")
        plan.check_powered_off(vm.name, vm.runtime.powerState)
        before = vsphere.read_settings(vm)
        present = vsphere.passthrough_devices(vm)
        held = {vsphere.device_ids(d)[0] for d in present}
        held_ids = set().union(*(vsphere.device_ids(d)[1] for d in present))
        missing = [f for f in chosen if f.address not in held and f.ids not in held_ids]
        displays = {f.ids for f in functions if f.is_display}
        others = [plan.GPU_MEMORY_GIB.get(ids, plan.MIN_MMIO_PER_GPU_GIB / 2)
                  for d in present for ids in vsphere.device_ids(d)[1] if ids in displays]
        new_memory = memory if missing else []
        gpu_memory = others + new_memory or memory
        mmio = plan.mmio_size_gib(gpu_memory)
        self._warn_memory(vm.name, vm.config.hardware.memoryMB, gpu_memory)
        desired = plan.desired_settings(before, mmio, self.request.hide_hypervisor)
        changes = plan.plan_changes(before, desired)
        question = plan.conversion_question(vm.name, changes)
        confirmed = None if question is None else confirm(question, [str(c) for c in changes])
        plan.check_converted(vm.name, before, confirmed)
        spec = vim.vm.ConfigSpec()
        vsphere.apply_changes(spec, changes)
        spec.deviceChange = self._devices(vm, missing) if missing else []
        if not missing:
            self.notes.append(f"VM {vm.name} already has {', '.join(f.address for f in chosen)}")
        try:
            if changes or missing:
                self._wait(vm.ReconfigVM_Task(spec=spec), vm.name, "reconfiguring")
            started = self._start(vm)
        except Exception as error:
            self._restore(vm, before, present, error)
            raise
        return self._result(vm, created=False, started=started)

    def _restore(self, vm, before: plan.VmSettings, devices: list, error: Exception) -> None:
        """Put an existing VM's settings and passthrough devices back as they were."""
        from pyVmomi import vim

        self.report(vm.name, f"failed ({type(error).__name__}): restoring its previous settings")
        if vm.runtime.powerState != "poweredOff":
            self._wait(vm.PowerOffVM_Task(), vm.name, "powering off")
        keep = {d.key for d in devices}
        spec = vim.vm.ConfigSpec(deviceChange=[
            vsphere.remove_device(d) for d in vsphere.passthrough_devices(vm) if d.key not in keep])
        changes = plan.restore_changes(vsphere.read_settings(vm), before)
        vsphere.apply_changes(spec, changes)
        if changes or spec.deviceChange:
            self._wait(vm.ReconfigVM_Task(spec=spec), vm.name, "restoring")


def backend() -> EsxiBackend:
    return EsxiBackend()
