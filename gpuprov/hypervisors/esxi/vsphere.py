"""The pyVmomi calls, kept thin: read vSphere into ``gpuprov.plan.esxi`` values, turn its
changes into specs, run tasks with progress. Decisions are made in the plan module."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from pyVmomi import vim, vmodl

from gpuprov.errors import GpuprovError, NotFoundError, UsageError
from gpuprov.hypervisors.base import Report
from gpuprov.plan.esxi import Change, PciFunction, VmSettings

Redact = Callable[[str], str]


class TaskFailed(GpuprovError):
    """A vSphere task ended in a fault; the message names the fault type and its reason."""


def describe_fault(fault) -> str:
    name = getattr(fault, "_wsdlName", type(fault).__name__)
    reason = getattr(fault, "reason", None) or getattr(fault, "msg", None) or ""
    messages = [m.message for m in getattr(fault, "faultMessage", None) or [] if m.message]
    return f"{name}: {'; '.join([reason, *messages]) if reason else '; '.join(messages)}".rstrip(
        ": ")


def wait(task, report: Report, subject: str, what: str, redact: Redact) -> object:
    """Wait for ``task``, reporting its progress; TaskFailed with the vSphere fault."""
    last = None
    delay = 0.05
    while True:
        info = task.info
        if info.state == vim.TaskInfo.State.success:
            report(subject, f"{what}: done")
            return info.result
        if info.state == vim.TaskInfo.State.error:
            raise TaskFailed(f"{what} failed on {subject}: {redact(describe_fault(info.error))}")
        shown = f"{what}: {info.progress}%" if info.progress is not None else f"{what}: running"
        if shown != last:
            report(subject, shown)
            last = shown
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def _view(content, root, kind) -> list:
    view = content.viewManager.CreateContainerView(root, [kind], True)
    try:
        return list(view.view)
    finally:
        view.Destroy()


def _named(objects, name: str | None) -> list:
    return [o for o in objects if name is None or o.name == name]


def select_host(content, options: Mapping[str, str], inventory_name: str,
                vm_name: str | None = None):
    """The ESXi host to work on: the only one in scope, or the one the options (datacenter,
    cluster, esx_host) or the existing VM name. A standalone ESXi host has exactly one."""
    datacenters = _named(_view(content, content.rootFolder, vim.Datacenter),
                         options.get("datacenter"))
    if not datacenters:
        raise NotFoundError(f"no datacenter {options['datacenter']!r} on {inventory_name}",
                            "the datacenters there are: " + ", ".join(
                                d.name for d in _view(content, content.rootFolder,
                                                      vim.Datacenter)))
    scopes = datacenters
    if options.get("cluster"):
        scopes = [c for d in datacenters for c in _named(
            _view(content, d.hostFolder, vim.ClusterComputeResource), options["cluster"])]
        if not scopes:
            raise NotFoundError(f"no cluster {options['cluster']!r} on {inventory_name}")
    hosts = [h for s in scopes for h in _named(_view(content, s, vim.HostSystem),
                                               options.get("esx_host"))]
    if vm_name is not None and len(hosts) > 1:
        on_vm_host = {vm.runtime.host for vm in find_vms(content, scopes, vm_name)}
        hosts = [h for h in hosts if h in on_vm_host] or hosts
    if len(hosts) == 1:
        return hosts[0]
    if not hosts:
        raise NotFoundError(f"no ESXi host {options.get('esx_host')!r} on {inventory_name}",
                            "list them with --option esx_host=NAME left out")
    raise UsageError(f"{inventory_name} manages {len(hosts)} ESXi hosts: "
                     f"{', '.join(sorted(h.name for h in hosts))}",
                     "choose one with --option esx_host=NAME (and datacenter=, cluster=)")


def datacenter_of(entity):
    while entity is not None and not isinstance(entity, vim.Datacenter):
        entity = entity.parent
    return entity


def find_vms(content, scopes: Sequence, name: str) -> list:
    """VMs named ``name`` (or with that managed object id, vm-42) under ``scopes``."""
    found = {}
    for scope in scopes:
        root = datacenter_of(scope).vmFolder if not isinstance(scope, vim.Datacenter) \
            else scope.vmFolder
        for vm in _view(content, root, vim.VirtualMachine):
            if name in (vm.name, vm._moId):
                found[vm._moId] = vm
    return list(found.values())


def pci_functions(host) -> list[PciFunction]:
    """The host's PCI functions with their passthrough state."""
    states = {i.id: i for i in host.config.pciPassthruInfo or []}
    functions = []
    for device in host.hardware.pciDevice:
        state = states.get(device.id)
        functions.append(PciFunction(
            address=device.id, vendor_id=device.vendorId & 0xFFFF,
            device_id=device.deviceId & 0xFFFF, class_id=device.classId & 0xFFFF,
            name=f"{device.vendorName} {device.deviceName}".strip(),
            capable=bool(state and state.passthruCapable),
            enabled=bool(state and state.passthruEnabled),
            active=bool(state and state.passthruActive)))
    return functions


def enable_passthrough(host, addresses: Sequence[str]) -> None:
    system = host.configManager.pciPassthruSystem
    system.UpdatePassthruConfig([vim.host.PciPassthruConfig(id=a, passthruEnabled=True)
                                 for a in addresses])
    system.Refresh()


def config_target(vm_or_host_parent, host) -> tuple[dict[str, str], set[str]]:
    """What the host offers VMs: {address: systemId} for DirectPath and the vendor:device ids
    offered for Dynamic DirectPath."""
    target = vm_or_host_parent.environmentBrowser.QueryConfigTarget(host=host)
    static = {p.pciDevice.id: p.systemId for p in target.pciPassthrough or []
              if isinstance(p, vim.vm.PciPassthroughInfo)}
    dynamic = {f"{d.vendorId & 0xFFFF:04x}:{d.deviceId & 0xFFFF:04x}"
               for d in getattr(target, "dynamicPassthrough", None) or []}
    return static, dynamic


def read_settings(vm) -> VmSettings:
    config = vm.config
    extra: dict[str, str] = {}
    for option in config.extraConfig or []:
        # The last value of a key wins, as in a .vmx file.
        extra[option.key] = str(option.value)
    extra = {k: v for k, v in extra.items() if v != ""}
    boot = config.bootOptions
    return VmSettings(firmware=config.firmware or "bios",
                      secure_boot=boot.efiSecureBootEnabled if boot else None,
                      memory_locked=bool(config.memoryReservationLockedToMax),
                      extra_config=extra)


def hardware_version(vm) -> int:
    return int(vm.config.version.removeprefix("vmx-"))


def passthrough_devices(vm) -> list:
    return [d for d in vm.config.hardware.device
            if isinstance(d, vim.vm.device.VirtualPCIPassthrough)]


def device_ids(device) -> tuple[str | None, set[str]]:
    """(static address or None, vendor:device ids) of a VM's passthrough device."""
    backing = device.backing
    if isinstance(backing, vim.vm.device.VirtualPCIPassthrough.DeviceBackingInfo):
        ids = f"{backing.vendorId & 0xFFFF:04x}:{int(backing.deviceId, 16) & 0xFFFF:04x}"
        return backing.id, {ids}
    allowed = getattr(backing, "allowedDevice", None) or []
    return None, {f"{a.vendorId & 0xFFFF:04x}:{a.deviceId & 0xFFFF:04x}" for a in allowed}


def describe_device(device) -> str:
    backing = device.backing
    if isinstance(backing, vim.vm.device.VirtualPCIPassthrough.DeviceBackingInfo):
        return f"pci {backing.id} (DirectPath, {device_ids(device)[1].pop()})"
    ids = ", ".join(sorted(device_ids(device)[1]))
    assigned = getattr(backing, "assignedId", None)
    return f"pci {ids} (Dynamic DirectPath{', assigned ' + assigned if assigned else ''})"


def _signed16(value: int) -> int:
    return value - 0x10000 if value > 0x7FFF else value


def passthrough_device(function: PciFunction, backing: str, system_id: str | None, key: int):
    if backing == "static":
        info = vim.vm.device.VirtualPCIPassthrough.DeviceBackingInfo(
            id=function.address, deviceId=f"{function.device_id:x}", systemId=system_id,
            vendorId=_signed16(function.vendor_id), deviceName=function.name)
    else:
        info = vim.vm.device.VirtualPCIPassthrough.DynamicBackingInfo(
            deviceName="", allowedDevice=[vim.vm.device.VirtualPCIPassthrough.AllowedDevice(
                vendorId=function.vendor_id, deviceId=function.device_id)])
    return vim.vm.device.VirtualDeviceSpec(
        operation=vim.vm.device.VirtualDeviceSpec.Operation.add,
        device=vim.vm.device.VirtualPCIPassthrough(key=key, backing=info))


def remove_device(device):
    return vim.vm.device.VirtualDeviceSpec(
        operation=vim.vm.device.VirtualDeviceSpec.Operation.remove, device=device)


def apply_changes(spec, changes: Sequence[Change]) -> None:
    """Write ``changes`` into a ConfigSpec (an extraConfig value None removes the key)."""
    extra = []
    for change in changes:
        if change.setting == "firmware":
            spec.firmware = change.new
        elif change.setting == "secure_boot":
            spec.bootOptions = vim.vm.BootOptions(efiSecureBootEnabled=bool(change.new))
        elif change.setting == "memory_locked":
            spec.memoryReservationLockedToMax = bool(change.new)
        else:
            extra.append(vim.option.OptionValue(key=change.setting,
                                                value="" if change.new is None else change.new))
    if extra:
        spec.extraConfig = extra


def new_vm_devices(host, shape, datastore: str, options: Mapping[str, str]) -> list:
    """A paravirtual SCSI disk, a VMXNET3 NIC on the host's first (or the named) network and,
    with an ISO, a SATA CD-ROM: what an OS installer needs."""
    add = vim.vm.device.VirtualDeviceSpec.Operation.add
    scsi = vim.vm.device.ParaVirtualSCSIController(
        key=-101, busNumber=0, sharedBus=vim.vm.device.VirtualSCSIController.Sharing.noSharing)
    disk = vim.vm.device.VirtualDisk(
        key=-102, controllerKey=-101, unitNumber=0, capacityInKB=shape.disk_gib * 2**20,
        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
            fileName=f"[{datastore}]", diskMode="persistent", thinProvisioned=True))
    devices = [vim.vm.device.VirtualDeviceSpec(operation=add, device=scsi),
               vim.vm.device.VirtualDeviceSpec(
                   operation=add, device=disk,
                   fileOperation=vim.vm.device.VirtualDeviceSpec.FileOperation.create)]
    networks = _named(host.network, options.get("network"))
    if options.get("network") and not networks:
        raise NotFoundError(f"host {host.name} has no network {options['network']!r}",
                            "its networks are: " + ", ".join(n.name for n in host.network))
    if networks:
        network = networks[0]
        if isinstance(network, vim.dvs.DistributedVirtualPortgroup):
            backing = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
                port=vim.dvs.PortConnection(
                    portgroupKey=network.key,
                    switchUuid=network.config.distributedVirtualSwitch.uuid))
        else:
            backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
                deviceName=network.name, network=network)
        devices.append(vim.vm.device.VirtualDeviceSpec(operation=add, device=(
            vim.vm.device.VirtualVmxnet3(key=-103, backing=backing, addressType="generated"))))
    if shape.iso:
        devices.append(vim.vm.device.VirtualDeviceSpec(
            operation=add, device=vim.vm.device.VirtualAHCIController(key=-104, busNumber=0)))
        cdrom = vim.vm.device.VirtualCdrom(
            key=-105, controllerKey=-104, unitNumber=0,
            backing=vim.vm.device.VirtualCdrom.IsoBackingInfo(fileName=shape.iso),
            connectable=vim.vm.device.VirtualDevice.ConnectInfo(startConnected=True))
        devices.append(vim.vm.device.VirtualDeviceSpec(operation=add, device=cdrom))
    return devices


def pick_datastore(host, wanted: str | None) -> str:
    usable = [d for d in host.datastore if d.summary.accessible]
    if wanted:
        if not _named(usable, wanted):
            raise NotFoundError(f"host {host.name} has no usable datastore {wanted!r}",
                                "its datastores are: " + ", ".join(d.name for d in usable))
        return wanted
    if not usable:
        raise NotFoundError(f"host {host.name} has no accessible datastore")
    return max(usable, key=lambda d: d.summary.freeSpace).name


def is_fault(error: Exception) -> bool:
    return isinstance(error, vmodl.MethodFault)
