"""The API methods the simulator implements, one function per schema method.

Each handler gets the request's principal and its already schema-validated, typed parameters,
and works on the Cluster state. The logic follows the Perl handlers it is named after
(qemu-server PVE/API2/Qemu.pm, pve-manager PVE/API2/*.pm) so that errors come from the same
checks, in the same order, with the same wording.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.pvesim import formats
from tests.pvesim.cluster import (
    ALL_PRIVILEGES,
    CLOUDINIT_SIZE,
    OVMF_VARS_SIZE,
    QEMU_VERSION,
    TPMSTATE_SIZE,
    Cluster,
    Node,
    PciMapping,
    Principal,
    PveError,
    Task,
    Vm,
    permission_denied,
)
from tests.pvesim.schema import ApiSchema, ParameterError, print_property_string

PVE_VERSION = {"version": "9.1.2", "release": "9.1", "repoid": "b5a1aa2a"}

DRIVE_NAME_RE = re.compile(
    r"ide[0-3]|sata[0-5]|scsi(?:[0-9]|[12][0-9]|30)|virtio(?:[0-9]|1[0-5])|efidisk0|tpmstate0")
# qemu-server valid_drive_names() order, used to pick default boot devices.
BOOT_DRIVE_ORDER = ([f"ide{i}" for i in range(4)] + [f"scsi{i}" for i in range(31)]
                    + [f"virtio{i}" for i in range(16)] + [f"sata{i}" for i in range(6)])
# Parameters of the create call that are not VM configuration.
CREATE_ONLY_PARAMS = {"node", "vmid", "archive", "bwlimit", "force", "pool", "start",
                      "ha-managed", "storage", "unique", "live-restore",
                      "import-working-storage"}

# Option groups of qemu-server's $check_vm_modify_config_perm: which privilege changes which
# option. Anything not listed (args, lock, affinity, hookscript, ...) is root@pam only.
CPU_OPTIONS = {"cores", "cpu", "cpulimit", "cpuunits", "numa", "smp", "sockets", "vcpus",
               "runningcpu"}
MEMORY_OPTIONS = {"memory", "balloon", "shares", "allow-ksm"}
HWTYPE_OPTIONS = {"acpi", "hotplug", "kvm", "machine", "scsihw", "smbios1", "tablet", "vga",
                  "watchdog", "audio0", "rng0", "runningmachine"}
GENERAL_OPTIONS = {"agent", "autostart", "bios", "description", "keyboard", "localtime",
                   "migrate_downtime", "migrate_speed", "name", "onboot", "ostype",
                   "protection", "reboot", "startdate", "startup", "tdf", "template"}
CLOUDINIT_OPTIONS = {"cicustom", "cipassword", "citype", "ciuser", "ciupgrade", "nameserver",
                     "searchdomain", "sshkeys"}
DISK_OPTIONS = {"boot", "bootdisk", "vmstatestorage"}
# Options that take effect at once on a running VM (qemu-server's $fast_plug_option) and the
# hot-pluggable device classes of the default 'hotplug: network,disk,usb'.
FAST_PLUG_OPTIONS = {"description", "hookscript", "lock", "migrate_downtime", "migrate_speed",
                     "name", "onboot", "protection", "shares", "startup", "tags",
                     "vmstatestorage"}
HOTPLUG_RE = re.compile(r"net\d+|scsi\d+|virtio\d+|sata\d+|usb\d+|unused\d+")


@dataclass
class Result:
    """A handler result with PVE's optional 'total' attribute (task logs, task lists)."""

    data: Any
    total: int | None = None


Handler = Callable[["Api", Principal, dict[str, Any]], Any]
HANDLERS: dict[tuple[str, str], Handler] = {}


def handles(method: str, path: str) -> Callable[[Handler], Handler]:
    def register(function: Handler) -> Handler:
        HANDLERS[(method, path)] = function
        return function

    return register


def param_error(name: str, message: str) -> ParameterError:
    return ParameterError({name: message})


class Api:
    """Shared helpers for the handlers: schema-driven parsing and printing of property strings,
    and the VM life-cycle steps several handlers use (disk allocation, start checks)."""

    def __init__(self, cluster: Cluster, schema: ApiSchema, fingerprint: str):
        self.cluster = cluster
        self.schema = schema
        self.fingerprint = fingerprint  # the TLS certificate's, as /nodes reports it
        self.vm_options = schema.endpoint("POST", "/nodes/{node}/qemu").properties

    # --- property strings ------------------------------------------------------------------------

    def option_format(self, key: str) -> dict:
        format_ = self.vm_options[key].get("format")
        return format_ if isinstance(format_, dict) else self.schema.named_hash_format(format_)

    def parse_option(self, key: str, value: str) -> dict:
        return self.schema.parse_property_string(self.option_format(key), str(value), key)

    def print_option(self, key: str, parsed: dict) -> str:
        return print_property_string(parsed, self.option_format(key))

    def typed_value(self, key: str, value: Any) -> Any:
        """As parse_vm_config stores values: integers and booleans as numbers."""
        kind = (self.vm_options.get(key) or {}).get("type")
        if kind in ("integer", "boolean"):
            return int(value)
        if kind == "number":
            number = float(value)
            return int(number) if number.is_integer() else number
        return str(value)

    def option_exists(self, key: str) -> bool:
        return key in self.vm_options and key not in CREATE_ONLY_PARAMS

    # --- permissions that depend on values (qemu-server API2/Qemu.pm) ----------------------------

    def check_modify_config_perm(self, who: Principal, vmid: int, keys: list[str]) -> None:
        """$check_vm_modify_config_perm: per option group privilege; the rest is root-only."""
        if who.is_root:
            return
        path = f"/vms/{vmid}"
        for key in keys:
            if (DRIVE_NAME_RE.fullmatch(key) or key in ("cdrom", "tags")
                    or re.fullmatch(r"(?:unused|serial|usb|hostpci|virtiofs)\d+", key)):
                continue  # checked elsewhere, value dependent
            if key in CPU_OPTIONS or re.fullmatch(r"numa\d+", key):
                who.require(path, "VM.Config.CPU")
            elif key in MEMORY_OPTIONS:
                who.require(path, "VM.Config.Memory")
            elif key in HWTYPE_OPTIONS:
                who.require(path, "VM.Config.HWType")
            elif key in GENERAL_OPTIONS:
                who.require(path, "VM.Config.Options")
                if key == "startup":
                    who.require("/", "Sys.Modify")
            elif key == "freeze":
                who.require(path, "VM.PowerMgmt")
            elif key in DISK_OPTIONS:
                who.require(path, "VM.Config.Disk")
            elif re.fullmatch(r"net\d+", key):
                who.require(path, "VM.Config.Network")
            elif key in CLOUDINIT_OPTIONS or re.fullmatch(r"ipconfig\d+", key):
                who.require(path, "VM.Config.Cloudinit", "VM.Config.Network", any_of=True)
            else:
                raise PveError(f"only root can set '{key}' config\n")

    def check_device_perms(self, who: Principal, vmid: int, settings: dict[str, Any]) -> None:
        """The serial, usb and hostpci checks: real host devices are root@pam only, mapped
        devices need Mapping.Use on the mapping."""
        if who.is_root:
            return
        path = f"/vms/{vmid}"
        for key in sorted(settings):
            value = str(settings[key])
            if re.fullmatch(r"serial\d+", key):
                if value != "socket":
                    raise PveError(f"only root can set '{key}' config for real devices\n")
                who.require(path, "VM.Config.HWType")
            elif re.fullmatch(r"usb\d+", key):
                who.require(path, "VM.Config.HWType")
                device = self.parse_option(key, value)
                if device.get("host") and str(device["host"]).lower() != "spice":
                    raise PveError(f"only root can set '{key}' config for real devices\n")
                if device.get("mapping"):
                    who.require(f"/mapping/usb/{device['mapping']}", "Mapping.Use")
                elif not device.get("host"):
                    raise PveError("either 'host' or 'mapping' must be set.\n")
            elif re.fullmatch(r"hostpci\d+", key):
                self.check_hostpci_perm(who, vmid, key, value)

    def check_hostpci_perm(self, who: Principal, vmid: int, key: str, value: str) -> None:
        if who.is_root:
            return
        device = self.parse_option(key, value)
        if device.get("host"):
            raise PveError(f"only root can set '{key}' config for non-mapped devices\n")
        if device.get("mapping"):
            who.require(f"/mapping/pci/{device['mapping']}", "Mapping.Use")
            who.require(f"/vms/{vmid}", "VM.Config.HWType")
        else:
            raise PveError("either 'host' or 'mapping' must be set.\n")
        if device.get("romfile") is not None:
            raise param_error(key, "only root@pam can set 'romfile' option")

    # --- disks -----------------------------------------------------------------------------------

    def storage(self, node: Node, name: str) -> Any:
        """PVE::Storage::storage_config."""
        if name not in node.storages:
            raise PveError(f"storage '{name}' does not exist\n")
        return node.storages[name]

    def check_storage_access(self, who: Principal, node: Node, settings: dict[str, Any],
                             default_storage: str | None) -> None:
        """$check_storage_access: new volumes need a storage that holds 'images'."""
        for key in sorted(settings):
            if not DRIVE_NAME_RE.fullmatch(key):
                continue
            drive = self.parse_option(key, settings[key])
            volid = str(drive.get("file", ""))
            is_cdrom = drive.get("media") == "cdrom"
            new_disk = re.fullmatch(formats.NEW_DISK_RE, volid)
            if not volid or volid in ("none", "cloudinit") or volid.endswith(":cloudinit"):
                continue
            if is_cdrom and volid == "cdrom":
                who.require("/", "Sys.Console")
            elif not is_cdrom and new_disk:
                storage_id = new_disk.group(1) or default_storage
                if not storage_id:
                    raise PveError("no storage ID specified (and no default storage)\n")
                who.require(f"/storage/{storage_id}", "Datastore.AllocateSpace")
                storage = self.storage(node, storage_id)
                if "images" not in storage.content:
                    raise param_error("storage",
                                      f"storage '{storage_id}' does not support vm images")
            else:
                storage_id = volid.split(":", 1)[0]
                who.require(f"/storage/{storage_id}", "Datastore.AllocateSpace",
                            "Datastore.Audit", any_of=True)
                if volid.startswith(f"{storage_id}:iso/") and not is_cdrom:
                    raise param_error(key, "explicit 'media=cdrom' is required for iso images")

    def normalized_drives(self, settings: dict[str, Any]) -> None:
        """$check_drive_param: drives are stored re-printed (keys sorted, booleans as 0/1)."""
        for key in list(settings):
            if DRIVE_NAME_RE.fullmatch(key):
                settings[key] = self.print_option(key, self.parse_option(key, settings[key]))

    def add_random_macs(self, settings: dict[str, Any]) -> None:
        """PVE::QemuServer::Network::add_random_macs: every NIC gets a fixed MAC."""
        for key in list(settings):
            if re.fullmatch(r"net\d+", key):
                net = self.parse_option(key, settings[key])
                net.setdefault("macaddr", self.cluster.random_mac())
                settings[key] = self.print_option(key, net)

    def create_disks(self, task: Task, vm: Vm, node: Node, settings: dict[str, Any],
                     default_storage: str | None) -> list[str]:
        """create_disks: allocate `STORAGE:SIZE` volumes in sorted option order and store each
        drive as PVE prints it; returns the new volume ids (freed again on failure)."""
        created: list[str] = []
        for key in sorted(settings):
            if not DRIVE_NAME_RE.fullmatch(key):
                continue
            drive = self.parse_option(key, settings[key])
            volid = str(drive["file"])
            new_disk = re.fullmatch(formats.NEW_DISK_RE, volid)
            if volid in ("none", "cdrom"):
                drive.pop("size", None)
            elif volid == "cloudinit" or volid.endswith(":cloudinit"):
                storage = self.storage(node, volid.split(":")[0] if ":" in volid
                                       else default_storage or "")
                volume = storage.allocate(vm.vmid, CLOUDINIT_SIZE, name=f"vm-{vm.vmid}-cloudinit")
                created.append(volume.volid)
                drive.update(file=volume.volid, media="cdrom")
                drive.pop("format", None)
                task.log(f"{key}: successfully created disk '{self.print_option(key, drive)}'")
            elif new_disk and drive.get("media") != "cdrom":
                storage = self.storage(node, new_disk.group(1) or default_storage or "")
                if key == "efidisk0":
                    efitype = str(drive.get("efitype", "2m"))
                    size = OVMF_VARS_SIZE[efitype]
                    if drive.get("pre-enrolled-keys") and efitype == "4m":
                        drive["ms-cert"] = "2023"  # the 4M Microsoft vars carry the 2023 CA
                elif key == "tpmstate0":
                    size = TPMSTATE_SIZE
                else:
                    size = int(float(new_disk.group(2)) * 1024**3)
                fmt = "raw" if key == "tpmstate0" else drive.get("format")
                volume = storage.allocate(vm.vmid, size, fmt=fmt)
                created.append(volume.volid)
                drive.update(file=volume.volid, size=volume.size)
                drive.pop("format", None)
                task.log(f"{key}: successfully created disk '{self.print_option(key, drive)}'")
            else:
                volume = self.find_volume(node, volid)
                if volume is None:
                    raise PveError(f"volume '{volid}' does not exist\n")
                drive["size"] = volume.size
            settings[key] = self.print_option(key, drive)
        return created

    @staticmethod
    def find_volume(node: Node, volid: str) -> Any:
        storage = node.storages.get(volid.split(":", 1)[0])
        return storage.volumes.get(volid) if storage else None

    def free_volume(self, node: Node, volid: str, task: Task | None = None) -> None:
        storage = node.storages.get(volid.split(":", 1)[0])
        if storage and storage.volumes.pop(volid, None) and task is not None:
            name = volid.split(":", 1)[1]
            if storage.type == "lvmthin":
                task.log(f'  Logical volume "{name}" successfully removed.')
            else:
                task.log(f"Removed volume '{volid}'")

    def volumes_of(self, config: dict[str, Any]) -> list[str]:
        """Volume ids a configuration references (disks and unused[n], not CD-ROMs)."""
        volids = []
        for key, value in config.items():
            if DRIVE_NAME_RE.fullmatch(key) or re.fullmatch(r"unused\d+", key):
                drive = self.parse_option(key, value)
                if drive.get("media") != "cdrom" and ":" in str(drive.get("file", "")):
                    volids.append(str(drive["file"]))
        return volids

    # --- status ----------------------------------------------------------------------------------

    def default_boot_order(self, config: dict[str, Any]) -> str | None:
        """get_default_bootdevices: first disk, first CD-ROM, first NIC."""
        def first(cdrom: bool) -> str | None:
            for key in BOOT_DRIVE_ORDER:
                if key in config:
                    is_cdrom = self.parse_option(key, config[key]).get("media") == "cdrom"
                    if is_cdrom == cdrom:
                        return key
            return None

        devices = [d for d in (first(False), first(True)) if d]
        nets = sorted((k for k in config if re.fullmatch(r"net\d+", k)),
                      key=lambda k: int(k[3:]))
        devices += nets[:1]
        return f"order={';'.join(devices)}" if devices else None

    def vm_status(self, vm: Vm) -> dict[str, Any]:
        """PVE::QemuServer::vmstatus for one VM."""
        config = vm.config
        memory = self.parse_option("memory", config["memory"]) if "memory" in config else {}
        cpus = config.get("vcpus") or config.get("sockets", 1) * config.get("cores", 1)
        running = vm.status == "running"
        status: dict[str, Any] = {
            "vmid": vm.vmid,
            "name": config.get("name", f"VM {vm.vmid}"),
            "status": vm.status,
            "cpus": cpus,
            "maxmem": int(memory.get("current", 512)) * 1024**2,
            "maxdisk": self.boot_disk_size(vm),
            "mem": int(memory.get("current", 512)) * 1024**2 // 3 if running else 0,
            "disk": 0,
            "cpu": 0.0123 if running else 0,
            "uptime": int(time.time() - vm.started_at) if running and vm.started_at else 0,
            "netin": 0, "netout": 0, "diskread": 0, "diskwrite": 0,
        }
        if running:
            status["pid"] = vm.pid
        for key in ("tags", "lock", "template"):
            if key in config:
                status[key] = config[key]
        return status

    def boot_disk_size(self, vm: Vm) -> int:
        boot = self.parse_option("boot", vm.config["boot"]) if "boot" in vm.config else {}
        candidates = str(boot.get("order", "")).split(";") + BOOT_DRIVE_ORDER
        for key in candidates:
            if DRIVE_NAME_RE.fullmatch(key) and key in vm.config:
                drive = self.parse_option(key, vm.config[key])
                if drive.get("media") != "cdrom":
                    size = drive.get("size")
                    return formats.parse_size(str(size)) or 0 if size else 0
        return 0

    # --- pending changes -------------------------------------------------------------------------

    def apply_pending(self, vm: Vm, node: Node, task: Task | None = None) -> None:
        """vmconfig_apply_pending: what waited for the next stop/start takes effect."""
        for key in list(vm.pending_delete):
            self.delete_option(vm, node, key, force=False, task=task)
        for key, value in vm.pending.items():
            self.set_option(vm, key, value)
        vm.pending.clear()
        vm.pending_delete.clear()

    def set_option(self, vm: Vm, key: str, value: Any) -> None:
        old = vm.config.get(key)
        if old is not None and DRIVE_NAME_RE.fullmatch(key):
            old_drive, new_drive = self.parse_option(key, old), self.parse_option(key, value)
            if old_drive.get("media") != "cdrom" and old_drive["file"] != new_drive["file"]:
                self._register_unused(vm, str(old_drive["file"]))
        vm.config[key] = value

    def delete_option(self, vm: Vm, node: Node, key: str, force: bool,
                       task: Task | None) -> None:
        old = vm.config.pop(key, None)
        if old is None:
            return
        if DRIVE_NAME_RE.fullmatch(key):
            drive = self.parse_option(key, old)
            if drive.get("media") != "cdrom" and ":" in str(drive["file"]):
                if force:
                    self.free_volume(node, str(drive["file"]), task)
                else:
                    self._register_unused(vm, str(drive["file"]))
        elif re.fullmatch(r"unused\d+", key):
            self.free_volume(node, str(self.parse_option(key, old)["file"]), task)

    @staticmethod
    def _register_unused(vm: Vm, volid: str) -> None:
        if any(str(v).split(",")[0] == volid for k, v in vm.config.items()
               if k.startswith("unused")):
            return
        index = next(i for i in range(256) if f"unused{i}" not in vm.config)
        vm.config[f"unused{index}"] = volid

    # --- starting a VM ---------------------------------------------------------------------------

    def start_vm(self, vm: Vm, task: Task) -> None:
        """vm_start: the checks qemu-server makes before QEMU runs, PCI passthrough first."""
        node = self.cluster.nodes[vm.node]
        task.checkpoint()
        if vm.config.get("lock"):
            raise PveError(f"VM is locked ({vm.config['lock']})\n")
        if vm.status == "running":
            raise PveError(f"VM {vm.vmid} already running\n")
        if vm.pending or vm.pending_delete:
            self.apply_pending(vm, node, task)
        pci_ids = self.reserve_pci_devices(vm, node)
        for key in sorted(vm.config):
            if re.fullmatch(r"net\d+", key):
                bridge = self.parse_option(key, vm.config[key]).get("bridge")
                if bridge and bridge not in node.bridges:
                    raise PveError(f"bridge '{bridge}' does not exist\n")
        if pci_ids and not node.iommu:
            raise PveError("cannot prepare PCI pass-through, IOMMU not present\n")
        machine = self.parse_option("machine", vm.config["machine"]) \
            if "machine" in vm.config else {}
        machine_type = str(machine.get("type") or "pc")
        flavour = "q35" if "q35" in machine_type else "i440fx"
        vm.status, vm.pid, vm.started_at = "running", self.cluster.next_pid(), time.time()
        vm.running_machine = f"pc-{flavour}-10.1+pve0"
        vm.pci_reserved = pci_ids

    def parse_hostpci(self, key: str, value: str, node: Node) -> dict[str, Any]:
        """PCI.pm parse_hostpci: resolve host= or mapping= to lists of alternative devices."""
        device = self.parse_option(key, value)
        host, mapping = device.pop("host", None), device.pop("mapping", None)
        if host is not None and mapping is not None:
            raise PveError("Cannot set both 'host' and 'mapping'.\n")
        if mapping:
            entries = self.mapping_entries(str(mapping), node.name)
            if not entries:
                raise PveError(f"PCI device mapping not found for '{mapping}'\n")
            for entry in entries:
                try:
                    assert_mapping_valid(str(mapping), entry, node)
                except PveError as error:
                    raise PveError("PCI device mapping invalid (hardware probably changed): "
                                   f"{error.message}\n") from None
            alternatives = [entry["path"].split(";") for entry in entries]
        elif host:
            alternatives = [str(host).split(";")]
        else:
            raise PveError("Either 'host' or 'mapping' must be set.\n")
        device["ids"] = []
        for alternative in alternatives:
            ids: list[dict] = []
            for pci_id in alternative:
                found = node.lspci(pci_id)
                if not found:
                    raise PveError(f"no PCI device found for '{pci_id}'\n")
                ids += found
            if len(ids) > 1 and device.get("mdev"):
                raise PveError("cannot use mediated device with multifunction device\n")
            device["ids"].append(ids)
        return device

    def mapping_entries(self, mapping_id: str, node_name: str) -> list[dict] | None:
        """PVE::Mapping::PCI::get_node_mapping: the parsed map entries for one node."""
        mapping = self.cluster.mappings.get(mapping_id)
        if mapping is None:
            return None
        item_format = self.schema.endpoint("POST", "/cluster/mapping/pci") \
            .properties["map"]["items"]["format"]
        entries = []
        for text in mapping.map:
            entry = self.schema.parse_property_string(item_format, text, "")
            if entry.get("node") == node_name:
                entries.append(entry)
        return entries

    def reserve_pci_devices(self, vm: Vm, node: Node) -> list[str]:
        """parse_hostpci_devices + choose_hostpci_devices + reserve_pci_usage."""
        machine = self.parse_option("machine", vm.config["machine"]) \
            if "machine" in vm.config else {}
        q35 = "q35" in str(machine.get("type") or "")
        in_use = {pci_id: other.vmid for other in self.cluster.vms.values()
                  if other.node == node.name and other.status == "running"
                  and other.vmid != vm.vmid for pci_id in other.pci_reserved}
        chosen: list[str] = []
        for index in range(16):
            key = f"hostpci{index}"
            if key not in vm.config:
                continue
            device = self.parse_hostpci(key, str(vm.config[key]), node)
            if not q35 and device.get("pcie"):
                raise PveError("q35 machine model is not enabled")  # (Perl adds ' at ... line')
            if device.get("mdev"):
                continue  # mediated devices are created, not reserved
            alternatives = device["ids"]
            if len(alternatives) == 1:
                ids = [d["id"] for d in alternatives[0]]
            else:
                free = [alt for alt in alternatives
                        if not any(d["id"] in in_use or d["id"] in chosen for d in alt)]
                if not free:
                    raise PveError(f"could not find a free device for '{key}'\n")
                ids = [d["id"] for d in free[0]]
            for pci_id in ids:
                if pci_id in chosen:
                    raise PveError(f"device '{pci_id}' assigned more than once\n")
                chosen.append(pci_id)
        for pci_id in chosen:
            if pci_id in in_use:
                raise PveError(f"PCI device '{pci_id}' already in use by VMID "
                               f"'{in_use[pci_id]}'\n")
        return chosen

    def stop_vm(self, vm: Vm) -> None:
        if vm.status != "running":
            return  # vm_stop returns quietly when there is no QEMU process
        vm.status, vm.pid, vm.started_at, vm.running_machine = "stopped", None, None, None
        vm.pci_reserved = []
        if vm.pending or vm.pending_delete:
            self.apply_pending(vm, self.cluster.nodes[vm.node])


def assert_mapping_valid(name: str, entry: dict, node: Node) -> None:
    """PVE::Mapping::PCI::assert_valid: the mapped hardware must still be what was mapped."""
    for index, path in enumerate(str(entry.get("path", "")).split(";")):
        if not re.search(r"\.[a-f0-9]", path, re.I):
            path = f"{path}.0"  # whole device: its first function must exist
        info = node.pci_device(path)
        if info is None:
            raise PveError(f"pci device '{path}' not found\n")
        correct = {
            "id": f"{info['vendor']}:{info['device']}",
            "iommugroup": group if (group := node.iommu_group(info)) >= 0 else None,
            "subsystem-id": f"{info['subsystem_vendor']}:{info['subsystem_device']}",
        }
        for prop in sorted(correct):
            if prop == "iommugroup" and index > 0:
                continue
            expected, configured = correct[prop], entry.get(prop)
            if expected is None and configured is None:
                continue
            if configured is None:
                raise PveError(f"no '{prop}' for device '{path}'\n")
            if expected is None:
                raise PveError(f"'{prop}' configured but should not be\n")
            expected_text = str(expected).replace("0x", "")
            configured_text = str(configured).replace("0x", "")
            if expected_text != configured_text:
                raise PveError(f"'{prop}' does not match for '{name}' "
                               f"({expected_text} != {configured_text})\n")


# --- access --------------------------------------------------------------------------------------


def capabilities(who: Principal) -> dict[str, dict[str, int]]:
    """The 'cap' object of a login: which privileges the user has, grouped like the GUI."""
    privileges = ALL_PRIVILEGES if who.is_root else who.privileges
    groups = {"vms": ("VM.",), "storage": ("Datastore.",), "nodes": ("Sys.",),
              "access": ("User.", "Group.", "Permissions.", "Realm."), "dc": ("Sys.Audit",),
              "sdn": ("SDN.",), "mapping": ("Mapping.",)}
    return {group: {p: 1 for p in sorted(privileges) if p.startswith(prefixes)}
            for group, prefixes in groups.items()}


@handles("GET", "/version")
def get_version(api: Api, who: Principal, params: dict) -> Any:
    return dict(PVE_VERSION)


# --- nodes and cluster ---------------------------------------------------------------------------


def node_entry(node: Node, fingerprint: str) -> dict[str, Any]:
    return {
        "node": node.name, "id": f"node/{node.name}", "type": "node", "status": "online",
        "level": "", "cpu": 0.0213, "maxcpu": node.cpus, "mem": node.memory // 8,
        "maxmem": node.memory, "disk": 12 * 1024**3, "maxdisk": 100 * 1024**3,
        "uptime": int(time.time() - node.booted_at), "ssl_fingerprint": fingerprint,
    }


@handles("GET", "/nodes")
def list_nodes(api: Api, who: Principal, params: dict) -> Any:
    return [node_entry(node, api.fingerprint) for node in api.cluster.nodes.values()]


@handles("GET", "/nodes/{node}/status")
def node_status(api: Api, who: Principal, params: dict) -> Any:
    node = api.cluster.node(params["node"])
    return {
        "uptime": int(time.time() - node.booted_at),
        "cpu": 0.0213, "wait": 0.0004, "idle": 0,
        "loadavg": ["0.31", "0.27", "0.22"],
        "cpuinfo": {"model": node.cpu_model, "cpus": node.cpus, "sockets": 1,
                    "cores": node.cpus // 2, "mhz": "3400.000", "hvm": "1", "user_hz": 100,
                    "flags": "fpu vme de pse tsc msr pae svm npt"},
        "memory": {"total": node.memory, "used": node.memory // 8,
                   "free": node.memory - node.memory // 8,
                   "available": node.memory - node.memory // 8},
        "swap": {"total": 8 * 1024**3, "used": 0, "free": 8 * 1024**3},
        "rootfs": {"total": 100 * 1024**3, "used": 12 * 1024**3, "free": 88 * 1024**3,
                   "avail": 83 * 1024**3},
        "ksm": {"shared": 0},
        "kversion": "Linux 6.17.2-1-pve #1 SMP PREEMPT_DYNAMIC PMX 6.17.2-1 x86_64",
        "pveversion": f"pve-manager/{PVE_VERSION['version']}/{PVE_VERSION['repoid']}",
        "boot-info": {"mode": "efi", "secureboot": 0},
        "current-kernel": {"sysname": "Linux", "release": "6.17.2-1-pve",
                           "version": "#1 SMP PREEMPT_DYNAMIC PMX 6.17.2-1",
                           "machine": "x86_64"},
    }


@handles("GET", "/cluster/resources")
def cluster_resources(api: Api, who: Principal, params: dict) -> Any:
    kind = params.get("type")
    resources: list[dict] = []
    if kind in (None, "vm"):
        for vm in sorted(api.cluster.vms.values(), key=lambda v: v.vmid):
            if not who.has("VM.Audit"):
                continue
            status = api.vm_status(vm)
            resources.append({
                "id": f"qemu/{vm.vmid}", "type": "qemu", "vmid": vm.vmid, "node": vm.node,
                "name": status["name"], "status": vm.status,
                "template": int(vm.config.get("template", 0)),
                "maxcpu": status["cpus"], "maxmem": status["maxmem"],
                "maxdisk": status["maxdisk"], "mem": status["mem"], "disk": 0,
                "cpu": status["cpu"], "uptime": status["uptime"], "netin": 0, "netout": 0,
                "diskread": 0, "diskwrite": 0,
                **{key: status[key] for key in ("tags", "lock") if key in status},
            })
    if kind in (None, "node"):
        resources += [{key: value for key, value in node_entry(node, api.fingerprint).items()
                       if key != "ssl_fingerprint"} | {"cgroup-mode": 2}
                      for node in api.cluster.nodes.values()]
    if kind in (None, "storage"):
        for node in api.cluster.nodes.values():
            for storage in node.storages.values():
                resources.append({
                    "id": f"storage/{node.name}/{storage.name}", "type": "storage",
                    "storage": storage.name, "node": node.name, "status": "available",
                    "plugintype": storage.type, "content": ",".join(sorted(storage.content)),
                    "shared": 0, "disk": storage.used, "maxdisk": storage.total,
                })
    return resources


@handles("GET", "/cluster/nextid")
def next_vmid(api: Api, who: Principal, params: dict) -> Any:
    # Real PVE answers a string ("100") although the schema says integer.
    if "vmid" in params:
        if params["vmid"] in api.cluster.vms:
            raise param_error("vmid", f"VM {params['vmid']} already exists")
        return str(params["vmid"])
    vmid = next(v for v in range(100, 1_000_000) if v not in api.cluster.vms)
    return str(vmid)


@handles("GET", "/nodes/{node}/storage")
def list_storages(api: Api, who: Principal, params: dict) -> Any:
    node = api.cluster.node(params["node"])
    wanted_content = set(formats.split_list(params.get("content", "")))
    result = []
    for storage in node.storages.values():
        if "storage" in params and storage.name != params["storage"]:
            continue
        if wanted_content and not wanted_content & storage.content:
            continue
        if not (who.has("Datastore.Audit") or who.has("Datastore.AllocateSpace")):
            continue
        result.append({
            "storage": storage.name, "type": storage.type,
            "content": ",".join(sorted(storage.content)), "active": 1, "enabled": 1,
            "shared": 0, "total": storage.total, "used": storage.used,
            "avail": storage.total - storage.used,
            "used_fraction": storage.used / storage.total,
        })
    return result


# --- hardware ------------------------------------------------------------------------------------


@handles("GET", "/nodes/{node}/hardware/pci")
def pci_scan(api: Api, who: Principal, params: dict) -> Any:
    """API2/Hardware/PCI.pm pci_scan + SysFSTools::lspci: classes filtered by prefix."""
    node = api.cluster.node(params["node"])
    blacklist = formats.split_list(params.get("pci-class-blacklist", "05;06;0b"))
    verbose = params.get("verbose", 1)
    result = []
    for device in node.pci_devices:
        if any(device["class"].startswith(f"0x{prefix}") for prefix in blacklist):
            continue
        entry = {key: device[key] for key in ("id", "class", "vendor", "device")}
        entry["iommugroup"] = node.iommu_group(device)
        if device.get("mdev"):
            entry["mdev"] = 1
        if verbose:
            entry.update({key: device[key] for key in (
                "vendor_name", "device_name", "subsystem_vendor", "subsystem_device",
                "subsystem_vendor_name", "subsystem_device_name") if key in device})
        result.append(entry)
    return sorted(result, key=lambda entry: entry["id"])


@handles("GET", "/nodes/{node}/hardware/pci/{pci-id-or-mapping}")
def pci_index(api: Api, who: Principal, params: dict) -> Any:
    api.cluster.node(params["node"])
    return [{"method": "mdev"}]


@handles("GET", "/nodes/{node}/hardware/pci/{pci-id-or-mapping}/mdev")
def pci_mdev_types(api: Api, who: Principal, params: dict) -> Any:
    node = api.cluster.node(params["node"])
    target = params["pci-id-or-mapping"]
    if re.fullmatch(r"(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-9a-fA-F]", target):
        devices = [node.pci_device(target)]
    else:
        entries = api.mapping_entries(target, node.name) or []
        devices = [node.pci_device(e["path"]) for e in entries if ";" not in e["path"]]
    types: dict[str, dict] = {}
    for device in devices:
        for mdev_type in (device or {}).get("mdev_types", []):
            types.setdefault(mdev_type["type"], mdev_type)
    return [types[name] for name in sorted(types)]


# --- VMs -----------------------------------------------------------------------------------------


@handles("GET", "/nodes/{node}/qemu")
def list_vms(api: Api, who: Principal, params: dict) -> Any:
    api.cluster.node(params["node"])
    return [api.vm_status(vm) for vm in sorted(api.cluster.vms.values(), key=lambda v: v.vmid)
            if vm.node == params["node"] and who.has("VM.Audit")]


@handles("GET", "/nodes/{node}/qemu/{vmid}")
def vm_index(api: Api, who: Principal, params: dict) -> Any:
    api.cluster.vm_on(params["node"], params["vmid"])
    return [{"subdir": name} for name in (
        "config", "cloudinit", "pending", "status", "unlink", "vncproxy", "termproxy",
        "migrate", "resize", "move", "rrd", "rrddata", "monitor", "agent", "snapshot",
        "spiceproxy", "sendkey", "firewall", "mtunnel", "remote_migrate")]


@handles("POST", "/nodes/{node}/qemu")
def create_vm(api: Api, who: Principal, params: dict) -> Any:
    """qemu-server create_vm (no restore): checks, then a config locked 'create', then a
    qmcreate task that allocates disks and writes the final config."""
    cluster = api.cluster
    node = cluster.node(params["node"])
    vmid = params["vmid"]
    if "archive" in params:
        raise PveError("pvesim: restoring from a backup archive is not simulated\n", 501)
    settings = {k: v for k, v in params.items() if k not in CREATE_ONLY_PARAMS}
    start_after_create = params.get("start", 0)
    default_storage = params.get("storage")
    if "pool" in params:
        raise PveError(f"pool '{params['pool']}' does not exist\n")
    if default_storage is not None:
        who.require(f"/storage/{default_storage}", "Datastore.AllocateSpace")
    if start_after_create:
        who.require(f"/vms/{vmid}", "VM.PowerMgmt")
    who.require(f"/vms/{vmid}", "VM.Allocate")
    if "cdrom" in settings:  # $resolve_cdrom_alias
        cdrom = str(settings.pop("cdrom"))
        settings["ide2"] = cdrom if "media=" in cdrom else f"{cdrom},media=cdrom"
    if settings:
        api.check_storage_access(who, node, settings, default_storage)
        api.check_modify_config_perm(who, vmid, list(settings))
        api.check_device_perms(who, vmid, settings)
        api.normalized_drives(settings)
        api.add_random_macs(settings)
    if vmid in cluster.vms:
        raise PveError(f"unable to create VM {vmid} - VM {vmid} already exists on node "
                       f"'{cluster.vms[vmid].node}'\n")
    vm = Vm(vmid, node.name, {"lock": "create"})
    cluster.vms[vmid] = vm

    def work(task: Task) -> None:
        created: list[str] = []
        try:
            task.checkpoint()
            config = dict(settings)
            created = api.create_disks(task, vm, node, config, default_storage)
            config["meta"] = f"creation-qemu={QEMU_VERSION},ctime={int(time.time())}"
            if "boot" not in config and (order := api.default_boot_order(config)):
                config["boot"] = order
            config.setdefault("smbios1", f"uuid={cluster.new_uuid()}")
            if config.get("vmgenid", "1") == "1" and config.get("arch") != "aarch64":
                config["vmgenid"] = cluster.new_uuid()
            vm.config = {key: api.typed_value(key, value) for key, value in config.items()}
        except PveError as error:
            for volid in created:
                api.free_volume(node, volid)
            cluster.vms.pop(vmid, None)
            raise PveError(f"unable to create VM {vmid} - {error.message}") from None
        if start_after_create:
            task.log("Execute autostart")
            task.injected_failure = cluster.take_injected_failure("qmstart")
            try:
                api.start_vm(vm, task)
            except PveError as error:  # a failed autostart only warns (create_vm's `warn $@`)
                task.warn(error.message)

    return cluster.start_task(node.name, "qmcreate", str(vmid), who.userid, work)


@handles("DELETE", "/nodes/{node}/qemu/{vmid}")
def destroy_vm(api: Api, who: Principal, params: dict) -> Any:
    cluster = api.cluster
    vm = cluster.vm_on(params["node"], params["vmid"])
    node = cluster.nodes[vm.node]
    skiplock = params.get("skiplock")
    if skiplock and not who.is_root:
        raise param_error("skiplock", "Only root may use this option.")
    if vm.config.get("protection"):
        raise PveError(f"can't remove VM {vm.vmid} - protection mode enabled\n")
    if vm.config.get("lock") and not skiplock:
        raise PveError(f"VM is locked ({vm.config['lock']})\n")
    if vm.status == "running":
        raise PveError(f"VM {vm.vmid} is running - destroy failed\n")

    def work(task: Task) -> None:
        task.checkpoint()
        if vm.status == "running":  # repeated after locking, as qemu-server does
            raise PveError(f"VM {vm.vmid} is running - destroy failed\n")
        volids = api.volumes_of(vm.config) + api.volumes_of(vm.pending)
        if params.get("destroy-unreferenced-disks"):
            volids += [volid for storage in node.storages.values()
                       for volid, volume in storage.volumes.items() if volume.vmid == vm.vmid]
        for volid in dict.fromkeys(volids):
            api.free_volume(node, volid, task)
        if params.get("purge"):
            task.log(f"purging VM {vm.vmid} from related configurations..")
        cluster.vms.pop(vm.vmid, None)

    return cluster.start_task(node.name, "qmdestroy", str(vm.vmid), who.userid, work)


@handles("GET", "/nodes/{node}/qemu/{vmid}/config")
def get_vm_config(api: Api, who: Principal, params: dict) -> Any:
    vm = api.cluster.vm_on(params["node"], params["vmid"])
    if "snapshot" in params:
        raise PveError(f"snapshot '{params['snapshot']}' does not exist\n")
    config = dict(vm.config)
    if not params.get("current"):  # by default PVE answers with pending changes applied
        config.update(vm.pending)
        for key in vm.pending_delete:
            config.pop(key, None)
    config["digest"] = api.cluster.config_digest(vm)
    return config


def update_vm(api: Api, who: Principal, params: dict, asynchronous: bool) -> Any:
    """qemu-server update_vm_api, shared by POST (task 'qmconfig') and PUT (synchronous)."""
    cluster = api.cluster
    vm = cluster.vm_on(params["node"], params["vmid"])
    node = cluster.nodes[vm.node]
    settings = {k: v for k, v in params.items() if k not in (
        "node", "vmid", "digest", "skiplock", "delete", "revert", "force", "background_delay")}
    skiplock = params.get("skiplock")
    if skiplock and not who.is_root:
        raise param_error("skiplock", "Only root may use this option.")
    delete_text, revert_text = params.get("delete", ""), params.get("revert", "")
    if not delete_text and not revert_text and not settings:
        raise PveError("no options specified\n")
    if "cdrom" in settings:
        cdrom = str(settings.pop("cdrom"))
        settings["ide2"] = cdrom if "media=" in cdrom else f"{cdrom},media=cdrom"
    reverts = []
    for key in formats.split_list(revert_text):
        if not api.option_exists(key):
            raise param_error("revert", f"unknown option '{key}'")
        if key in settings:
            raise param_error("delete", f"you can't use '-{key}' and -revert {key}' at the "
                                        f"same time")
        reverts.append(key)
    deletes = []
    for key in formats.split_list(delete_text):
        key = "ide2" if key == "cdrom" else key
        if key in settings:
            raise param_error("delete", f"you can't use '-{key}' and -delete {key}' at the "
                                        f"same time")
        if key in reverts:
            raise param_error("revert", f"you can't use '-delete {key}' and -revert {key}' "
                                        f"at the same time")
        if not api.option_exists(key):
            raise param_error("delete", f"unknown option '{key}'")
        deletes.append(key)
    api.check_modify_config_perm(who, vm.vmid, deletes)
    for key in deletes:  # removing a raw device is as privileged as adding one
        current = vm.config.get(key, vm.pending.get(key))  # pending or not, as PVE does
        if re.fullmatch(r"hostpci\d+", key) and current is not None:
            api.check_hostpci_perm(who, vm.vmid, key, str(current))
    api.check_modify_config_perm(who, vm.vmid, list(settings))
    api.check_device_perms(who, vm.vmid, settings)
    api.check_storage_access(who, node, settings, None)
    api.normalized_drives(settings)
    api.add_random_macs(settings)

    def apply(task: Task | None) -> None:
        if task is not None:
            task.checkpoint()
        if "digest" in params and params["digest"] != cluster.config_digest(vm):
            raise PveError("detected modified configuration - file changed by other user? "
                           "Try again.\n")
        if vm.config.get("lock") and not skiplock:
            raise PveError(f"VM is locked ({vm.config['lock']})\n")
        scratch = task or Task("", node.name, 0, 0, 0, "qmconfig", str(vm.vmid), who.userid)
        new_values = dict(settings)
        api.create_disks(scratch, vm, node, new_values, None)
        running = vm.status == "running"
        for key in reverts:
            vm.pending.pop(key, None)
            if key in vm.pending_delete:
                vm.pending_delete.remove(key)
        for key in deletes:
            if running and not (key in FAST_PLUG_OPTIONS or HOTPLUG_RE.fullmatch(key)):
                vm.pending.pop(key, None)
                if key not in vm.pending_delete:
                    vm.pending_delete.append(key)
            else:
                api.delete_option(vm, node, key, bool(params.get("force")), task)
        for key, value in new_values.items():
            typed = api.typed_value(key, value)
            if running and not (key in FAST_PLUG_OPTIONS or HOTPLUG_RE.fullmatch(key)):
                vm.pending[key] = typed
                if key in vm.pending_delete:
                    vm.pending_delete.remove(key)
            else:
                api.set_option(vm, key, typed)

    if asynchronous:
        return cluster.start_task(node.name, "qmconfig", str(vm.vmid), who.userid, apply)
    apply(None)
    return None


@handles("POST", "/nodes/{node}/qemu/{vmid}/config")
def update_vm_async(api: Api, who: Principal, params: dict) -> Any:
    return update_vm(api, who, params, asynchronous=True)


@handles("PUT", "/nodes/{node}/qemu/{vmid}/config")
def update_vm_sync(api: Api, who: Principal, params: dict) -> Any:
    return update_vm(api, who, params, asynchronous=False)


@handles("GET", "/nodes/{node}/qemu/{vmid}/status/current")
def vm_current_status(api: Api, who: Principal, params: dict) -> Any:
    vm = api.cluster.vm_on(params["node"], params["vmid"])
    status = api.vm_status(vm)
    status.update(qmpstatus=vm.status, ha={"managed": 0}, agent=0)
    if vm.status == "running":
        status.update({"running-machine": vm.running_machine, "running-qemu": QEMU_VERSION})
    return status


def _skiplock(who: Principal, params: dict) -> None:
    if params.get("skiplock") and not who.is_root:
        raise param_error("skiplock", "Only root may use this option.")


@handles("POST", "/nodes/{node}/qemu/{vmid}/status/start")
def vm_start(api: Api, who: Principal, params: dict) -> Any:
    vm = api.cluster.vm_on(params["node"], params["vmid"])
    _skiplock(who, params)
    if "machine" in params:
        raise PveError("pvesim: starting with a machine override is not simulated\n", 501)
    return api.cluster.start_task(vm.node, "qmstart", str(vm.vmid), who.userid,
                                  lambda task: api.start_vm(vm, task))


def _stopping_task(api: Api, who: Principal, params: dict, kind: str) -> str:
    vm = api.cluster.vm_on(params["node"], params["vmid"])
    _skiplock(who, params)

    def work(task: Task) -> None:
        task.checkpoint()
        if vm.config.get("lock") and not params.get("skiplock"):
            raise PveError(f"VM is locked ({vm.config['lock']})\n")
        api.stop_vm(vm)

    return api.cluster.start_task(vm.node, kind, str(vm.vmid), who.userid, work)


@handles("POST", "/nodes/{node}/qemu/{vmid}/status/stop")
def vm_stop(api: Api, who: Principal, params: dict) -> Any:
    return _stopping_task(api, who, params, "qmstop")


@handles("POST", "/nodes/{node}/qemu/{vmid}/status/shutdown")
def vm_shutdown(api: Api, who: Principal, params: dict) -> Any:
    return _stopping_task(api, who, params, "qmshutdown")


# --- tasks ---------------------------------------------------------------------------------------


def _task(api: Api, who: Principal, params: dict) -> Task:
    upid = params["upid"]
    if not re.fullmatch(r"UPID:[^:]+:[0-9A-F]{8}:[0-9A-F]{8,}:[0-9A-F]{8}:[^:]*:[^:]*:[^:]+:",
                        upid):
        raise param_error("upid", "unable to parse worker upid")
    api.cluster.node(params["node"])
    task = api.cluster.tasks.get(upid)
    if task is None:
        raise param_error("upid", "no such task")
    if task.user != who.userid:
        who.require(f"/nodes/{params['node']}", "Sys.Audit")
    return task


@handles("GET", "/nodes/{node}/tasks/{upid}/status")
def task_status(api: Api, who: Principal, params: dict) -> Any:
    task = _task(api, who, params)
    status = {"upid": task.upid, "node": task.node, "pid": task.pid, "pstart": task.pstart,
              "starttime": task.starttime, "type": task.type, "id": task.id,
              "user": task.user, "status": task.status}
    if task.status == "stopped":
        status["exitstatus"] = task.exitstatus
    return status


@handles("GET", "/nodes/{node}/tasks/{upid}/log")
def task_log(api: Api, who: Principal, params: dict) -> Any:
    task = _task(api, who, params)
    start, limit = params.get("start") or 0, params.get("limit") or 50  # 0 means default, too
    lines = [{"n": number, "t": text} for number, text in enumerate(task.lines, start=1)]
    if not lines:
        return Result([{"n": 1, "t": "no content"}], total=1)
    return Result(lines[start:start + limit], total=len(lines))


@handles("GET", "/nodes/{node}/tasks")
def list_tasks(api: Api, who: Principal, params: dict) -> Any:
    node = api.cluster.node(params["node"])
    auditor = who.has("Sys.Audit")
    tasks = [t for t in sorted(api.cluster.tasks.values(), key=lambda t: -t.starttime)
             if t.node == node.name and (auditor or t.user == who.userid)]
    if "vmid" in params:
        tasks = [t for t in tasks if t.id == str(params["vmid"])]
    if "typefilter" in params:
        tasks = [t for t in tasks if t.type == params["typefilter"]]
    if params.get("errors"):
        tasks = [t for t in tasks if t.exitstatus not in (None, "OK")]
    start, limit = params.get("start") or 0, params.get("limit") or 50
    entries = []
    for task in tasks[start:start + limit]:
        entry = {"upid": task.upid, "node": task.node, "pid": task.pid, "pstart": task.pstart,
                 "starttime": task.starttime, "type": task.type, "id": task.id,
                 "user": task.user.split("!")[0]}
        if "!" in task.user:
            entry["tokenid"] = task.user.split("!", 1)[1]
        if task.status == "stopped":
            entry.update(endtime=task.endtime, status=task.exitstatus)
        entries.append(entry)
    return Result(entries, total=len(tasks))


# --- PCI resource mappings -----------------------------------------------------------------------


def _mapping_entry(api: Api, mapping: PciMapping) -> dict[str, Any]:
    return {"id": mapping.id, "type": "pci", **mapping.as_config(),
            "digest": api.cluster.mapping_digest()}


@handles("GET", "/cluster/mapping/pci")
def list_pci_mappings(api: Api, who: Principal, params: dict) -> Any:
    check_node = params.get("check-node")
    if check_node is not None:
        api.cluster.node(check_node)  # proxied to that node; unknown nodes cannot be reached
    result = []
    for mapping_id, mapping in sorted(api.cluster.mappings.items()):
        if not any(who.has(p) for p in ("Mapping.Modify", "Mapping.Use", "Mapping.Audit")):
            continue
        entry = _mapping_entry(api, mapping)
        if check_node is not None:
            entries = api.mapping_entries(mapping_id, check_node) or []
            checks = []
            if not entries:
                checks.append({"severity": "warning",
                               "message": f"No mapping for node {check_node}."})
            for node_entry_ in entries:
                try:
                    assert_mapping_valid(mapping_id, node_entry_, api.cluster.nodes[check_node])
                except PveError as error:
                    checks.append({"severity": "error",
                                   "message": f"Invalid configuration: {error.message}"})
            entry["checks"] = checks
        result.append(entry)
    return result


@handles("GET", "/cluster/mapping/pci/{id}")
def get_pci_mapping(api: Api, who: Principal, params: dict) -> Any:
    mapping = api.cluster.mappings.get(params["id"])
    if mapping is None:
        raise PveError(f"mapping '{params['id']}' not found\n")
    return {"type": "pci", **mapping.as_config(), "digest": api.cluster.mapping_digest()}


@handles("POST", "/cluster/mapping/pci")
def create_pci_mapping(api: Api, who: Principal, params: dict) -> Any:
    mapping_id = params["id"]
    if mapping_id in api.cluster.mappings:
        raise PveError(f"create hardware mapping failed: pci ID '{mapping_id}' already "
                       f"defined\n")
    api.cluster.mappings[mapping_id] = PciMapping(
        mapping_id, list(params["map"]), params.get("description"), params.get("mdev"),
        params.get("live-migration-capable"))
    return None


@handles("PUT", "/cluster/mapping/pci/{id}")
def update_pci_mapping(api: Api, who: Principal, params: dict) -> Any:
    cluster = api.cluster
    if "digest" in params and params["digest"] != cluster.mapping_digest():
        raise PveError("update hardware mapping failed: detected modified configuration - "
                       "file changed by other user? Try again.\n")
    mapping = cluster.mappings.get(params["id"])
    if mapping is None:
        raise PveError(f"update hardware mapping failed: pci ID '{params['id']}' does not "
                       f"exist\n")
    for key in formats.split_list(params.get("delete", "")):
        if key == "map":
            raise PveError("update hardware mapping failed: Cannot delete 'map' - "
                           "property is not optional\n")
        setattr(mapping, key.replace("-", "_"), None)
    if "map" in params:
        mapping.map = list(params["map"])
    for key in ("description", "mdev", "live-migration-capable"):
        if key in params:
            setattr(mapping, key.replace("-", "_"), params[key])
    return None


@handles("DELETE", "/cluster/mapping/pci/{id}")
def delete_pci_mapping(api: Api, who: Principal, params: dict) -> Any:
    api.cluster.mappings.pop(params["id"], None)  # PVE does not complain about unknown ids
    return None


def require_privileges_for_path(who: Principal, check: list, params: dict) -> None:
    """exec_api2_perm_check for the schema's permissions.check expressions."""
    kind = check[0]
    if kind == "perm":
        path = re.sub(r"\{([^}]+)\}", lambda m: str(params.get(m.group(1), "")), check[1])
        privileges = check[2]
        options = dict(zip(check[3::2], check[4::2], strict=False))
        who.require(path, *privileges, any_of=bool(options.get("any")))
    elif kind in ("or", "and"):
        failures = []
        for alternative in check[1:]:
            try:
                require_privileges_for_path(who, alternative, params)
            except PveError as error:
                failures.append(error)
                if kind == "and":
                    raise
            else:
                if kind == "or":
                    return
        if kind == "or" and failures:
            raise failures[-1]
    elif not who.is_root:  # userid-group, userid-param, ...: only root passes in this model
        raise permission_denied(f"{kind} check not simulated")
