"""The simulated cluster's state: nodes with PCI devices and storages, VMs, PCI mappings, users
and API tokens, and worker tasks. Everything the HTTP layer answers is computed from here.

Operations raise ``PveError`` with the status and message the real server sends (messages end
in a newline where PVE's ``die`` strings do, because PVE sends them verbatim).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).with_name("fixtures")
DEFAULT_PCI_FIXTURE = FIXTURES / "pve1-pci.json"

# Roles as PVE ships them (pve-access-control, AccessControl.pm's $privgroups), flattened.
VM_ADMIN_PRIVILEGES = frozenset({
    "VM.Allocate", "VM.Audit", "VM.Backup", "VM.Clone", "VM.Config.CDROM", "VM.Config.CPU",
    "VM.Config.Cloudinit", "VM.Config.Disk", "VM.Config.HWType", "VM.Config.Memory",
    "VM.Config.Network", "VM.Config.Options", "VM.Console", "VM.Migrate", "VM.PowerMgmt",
    "VM.Snapshot", "VM.Snapshot.Rollback", "VM.GuestAgent.Audit", "VM.GuestAgent.Unrestricted",
})
# What the gpuprov@pve!ci token gets by default: enough to provision passthrough VMs with
# mappings, nothing that makes it root (PVE checks 'root@pam' by name for raw devices).
DEFAULT_TOKEN_PRIVILEGES = VM_ADMIN_PRIVILEGES | {
    "Datastore.AllocateSpace", "Datastore.Audit", "Sys.Audit", "SDN.Use", "SDN.Audit",
    "Mapping.Audit", "Mapping.Use", "Mapping.Modify", "Pool.Audit",
}
ALL_PRIVILEGES = DEFAULT_TOKEN_PRIVILEGES | {
    "Sys.Modify", "Sys.Console", "Sys.PowerMgmt", "Sys.Syslog", "Sys.Incoming",
    "Datastore.Allocate", "Datastore.AllocateTemplate", "Permissions.Modify", "User.Modify",
    "Group.Allocate", "Realm.Allocate", "Realm.AllocateUser", "Pool.Allocate", "SDN.Allocate",
}

LVM_EXTENT = 4 * 1024**2  # LVM-thin volumes are allocated in whole 4 MiB extents
OVMF_VARS_SIZE = {"2m": 131072, "4m": 540672}  # bytes of OVMF_VARS.fd / OVMF_VARS_4M.fd
TPMSTATE_SIZE = 4 * 1024**2
CLOUDINIT_SIZE = 4 * 1024**2
PROXMOX_OUI = "BC:24:11"  # PVE's random MACs use Proxmox Server Solutions' prefix
QEMU_VERSION = "10.1.2"


class PveError(Exception):
    """An API error: HTTP status and PVE's message (usually ending in a newline)."""

    def __init__(self, message: str, status: int = 500):
        super().__init__(message)
        self.status = status
        self.message = message


def permission_denied(what: str) -> PveError:
    """PVE::Exception::raise_perm_exc."""
    return PveError(f"Permission check failed ({what})\n", 403)


# --- identities ----------------------------------------------------------------------------------


@dataclass
class Principal:
    """Who a request runs as. ``userid`` is PVE's authuser: 'root@pam' only for root's password
    login; a token's authuser is its full id ('root@pam!ci'), which is why root-only checks
    ($authuser eq 'root@pam') refuse every token."""

    userid: str
    privileges: frozenset[str]
    is_token: bool = False

    @property
    def is_root(self) -> bool:
        return self.userid == "root@pam"

    def has(self, privilege: str) -> bool:
        return self.is_root or privilege in self.privileges

    def require(self, path: str, *privileges: str, any_of: bool = False) -> None:
        """RPCEnvironment::check / check_any (coarse: one privilege set for every path)."""
        if self.is_root:
            return
        missing = [p for p in privileges if p not in self.privileges]
        if (any_of and len(missing) < len(privileges)) or not missing:
            return
        raise permission_denied(f"{path}, {'|'.join(privileges) if any_of else missing[0]}")


@dataclass
class User:
    userid: str
    password: str | None
    privileges: frozenset[str]


@dataclass
class ApiToken:
    tokenid: str  # user@realm!name
    secret: str
    privileges: frozenset[str]


# --- hardware and storage ------------------------------------------------------------------------


@dataclass
class Volume:
    volid: str
    vmid: int
    size: int  # bytes
    format: str


@dataclass
class Storage:
    """One storage as seen on one node (local storages are per node, as on a real cluster)."""

    name: str
    type: str  # "dir" or "lvmthin"
    content: frozenset[str]
    total: int
    volumes: dict[str, Volume] = field(default_factory=dict)

    @property
    def default_format(self) -> str:
        return "qcow2" if self.type == "dir" else "raw"

    @property
    def used(self) -> int:
        return sum(volume.size for volume in self.volumes.values())

    def allocate(self, vmid: int, size: int, fmt: str | None = None,
                 name: str | None = None) -> Volume:
        """PVE::Storage::vdisk_alloc: next free vm-<vmid>-disk-<n> name, sizes rounded as the
        backend does (LVM extents)."""
        fmt = fmt or self.default_format
        if name is None:
            taken = {v.volid.split(":", 1)[1].split("/")[-1].split(".")[0]
                     for v in self.volumes.values()}
            name = next(f"vm-{vmid}-disk-{n}" for n in itertools.count()
                        if f"vm-{vmid}-disk-{n}" not in taken)
        if self.type == "dir":
            filename = name if "." in name else f"{name}.{fmt}"
            volid = f"{self.name}:{vmid}/{filename}"
        else:
            size = -(-size // LVM_EXTENT) * LVM_EXTENT
            volid = f"{self.name}:{name}"
        volume = Volume(volid, vmid, size, fmt)
        self.volumes[volid] = volume
        return volume


def default_storages() -> dict[str, Storage]:
    """What a fresh PVE install on a single disk has: 'local' (directory) and 'local-lvm'."""
    local = Storage("local", "dir", frozenset({"iso", "vztmpl", "backup"}), 100 * 1024**3)
    iso = "local:iso/debian-13.1.0-amd64-netinst.iso"
    local.volumes[iso] = Volume(iso, 0, 754974720, "iso")
    return {
        "local": local,
        "local-lvm": Storage("local-lvm", "lvmthin", frozenset({"images", "rootdir"}),
                             800 * 1024**3),
    }


@dataclass
class Node:
    name: str
    pci_devices: list[dict]
    storages: dict[str, Storage] = field(default_factory=default_storages)
    bridges: tuple[str, ...] = ("vmbr0",)
    cpu_model: str = "AMD Ryzen 9 5950X 16-Core Processor"
    cpus: int = 32
    memory: int = 64 * 1024**3
    booted_at: float = field(default_factory=lambda: time.time() - 3 * 86400)
    iommu: bool = True  # False: booted without amd_iommu/intel_iommu, no IOMMU groups at all

    def iommu_group(self, device: dict) -> int:
        return device["iommugroup"] if self.iommu else -1

    def lspci(self, filter_id: str) -> list[dict]:
        """SysFSTools::lspci with a string filter: devices whose id starts with the filter,
        with or without the '0000:' domain (so '26:00' matches both functions)."""
        return [d for d in self.pci_devices
                if d["id"].startswith(filter_id) or d["id"].startswith(f"0000:{filter_id}")]

    def pci_device(self, pci_id: str) -> dict | None:
        full_id = pci_id if pci_id.count(":") == 2 else f"0000:{pci_id}"
        return next((d for d in self.pci_devices if d["id"] == full_id), None)


def load_pci_fixture(path: Path = DEFAULT_PCI_FIXTURE) -> list[dict]:
    return json.loads(path.read_text())["devices"]


# --- guests, mappings, tasks ---------------------------------------------------------------------


@dataclass
class Vm:
    vmid: int
    node: str
    config: dict[str, Any]
    pending: dict[str, Any] = field(default_factory=dict)
    pending_delete: list[str] = field(default_factory=list)
    status: str = "stopped"
    pid: int | None = None
    started_at: float | None = None
    running_machine: str | None = None
    pci_reserved: list[str] = field(default_factory=list)  # full PCI ids held while running


@dataclass
class PciMapping:
    id: str
    map: list[str]
    description: str | None = None
    mdev: int | None = None
    live_migration_capable: int | None = None

    def as_config(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"map": list(self.map)}
        if self.description is not None:
            entry["description"] = self.description
        if self.mdev is not None:
            entry["mdev"] = self.mdev
        if self.live_migration_capable is not None:
            entry["live-migration-capable"] = self.live_migration_capable
        return entry


@dataclass
class Task:
    upid: str
    node: str
    pid: int
    pstart: int
    starttime: int
    type: str
    id: str
    user: str
    lines: list[str] = field(default_factory=list)
    status: str = "running"
    exitstatus: str | None = None
    endtime: int | None = None
    warnings: int = 0
    injected_failure: str | None = None

    def log(self, line: str) -> None:
        self.lines.extend(line.rstrip("\n").split("\n"))

    def warn(self, message: str) -> None:
        """RESTEnvironment::warn: a 'WARN:' line, and the task ends as 'WARNINGS: n'."""
        self.log(f"WARN: {message.rstrip()}")
        self.warnings += 1

    def checkpoint(self) -> None:
        """Where a failure injected with PveSimulator.fail_task() strikes."""
        if self.injected_failure is not None:
            message, self.injected_failure = self.injected_failure, None
            raise PveError(message)


def encode_upid(node: str, pid: int, pstart: int, starttime: int, kind: str, task_id: str,
                user: str) -> str:
    """PVE::Tools::upid_encode (note the trailing colon)."""
    return f"UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{kind}:{task_id}:{user}:"


class Cluster:
    """All simulated state, guarded by one re-entrant lock (HTTP handlers and task threads)."""

    def __init__(self, nodes: list[Node], users: dict[str, User], tokens: dict[str, ApiToken]):
        self.lock = threading.RLock()
        self.nodes = {node.name: node for node in nodes}
        self.users = users
        self.tokens = tokens
        self.vms: dict[int, Vm] = {}
        self.mappings: dict[str, PciMapping] = {}
        self.tasks: dict[str, Task] = {}
        self.task_delay = 0.05  # seconds a task stays 'running' before its work runs
        self._task_gate = threading.Event()
        self._task_gate.set()
        self._task_threads: list[threading.Thread] = []
        self._injected_failures: dict[str, list[str]] = {}
        self._pids = itertools.count(random.randint(20000, 40000))
        self._boot_clock_ticks = random.randint(10_000, 90_000)
        self.random = random.Random()

    # --- tasks -----------------------------------------------------------------------------------

    def fail_next_task(self, kind: str, message: str) -> None:
        with self.lock:
            self._injected_failures.setdefault(kind, []).append(message)

    def take_injected_failure(self, kind: str) -> str | None:
        with self.lock:
            queue = self._injected_failures.get(kind) or []
            return queue.pop(0) if queue else None

    @contextmanager
    def hold_tasks(self) -> Iterator[None]:
        """Tasks started inside stay 'running' until the block ends."""
        self._task_gate.clear()
        try:
            yield
        finally:
            self._task_gate.set()

    def start_task(self, node: str, kind: str, task_id: str, user: str,
                   work: Callable[[Task], None]) -> str:
        """RESTEnvironment::fork_worker: register a running task and do ``work`` in a thread.
        A PveError (or any exception) ends the task with that message as exit status."""
        with self.lock:
            now = int(time.time())
            pid = self.next_pid()
            pstart = self._boot_clock_ticks + (now - int(self.nodes[node].booted_at)) * 100
            upid = encode_upid(node, pid, pstart, now, kind, task_id, user)
            task = Task(upid, node, pid, pstart, now, kind, task_id, user)
            task.injected_failure = self.take_injected_failure(kind)
            self.tasks[upid] = task

        def run() -> None:
            self._task_gate.wait()
            if self.task_delay:
                time.sleep(self.task_delay)
            with self.lock:
                try:
                    work(task)
                except PveError as error:
                    self._finish(task, error.message)
                except Exception as error:  # a simulator bug: say so in the task log
                    task.log(traceback.format_exc())
                    self._finish(task, f"pvesim internal error: {error}")
                else:
                    self._finish(task, None)

        thread = threading.Thread(target=run, name=f"pvesim-task-{kind}-{task_id}", daemon=True)
        self._task_threads.append(thread)
        thread.start()
        return upid

    @staticmethod
    def _finish(task: Task, error: str | None) -> None:
        if error is not None:
            # fork_worker: chomp, then newlines become spaces
            task.exitstatus = error.rstrip("\n").replace("\n", " ")
            task.log(f"TASK ERROR: {task.exitstatus}")
        elif task.warnings:
            task.exitstatus = f"WARNINGS: {task.warnings}"
            task.log(f"TASK {task.exitstatus}")
        else:
            task.exitstatus = "OK"
            task.log("TASK OK")
        task.endtime = int(time.time())
        task.status = "stopped"

    def wait_for_tasks(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        for thread in list(self._task_threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def next_pid(self) -> int:
        return next(self._pids)

    # --- lookups ---------------------------------------------------------------------------------

    def node(self, name: str) -> Node:
        """proxyto => 'node': a node that is not in the cluster cannot be resolved."""
        try:
            return self.nodes[name]
        except KeyError:
            raise PveError(f"hostname lookup '{name}' failed - failed to get address info for: "
                           f"{name}: Name or service not known\n") from None

    def vm_on(self, node: str, vmid: int) -> Vm:
        """PVE::QemuConfig->load_config: the VM must be configured on that very node."""
        vm = self.vms.get(vmid)
        if vm is None or vm.node != node:
            raise PveError(f"Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does "
                           f"not exist\n")
        return vm

    def random_mac(self) -> str:
        tail = ":".join(f"{self.random.randrange(256):02X}" for _ in range(3))
        return f"{PROXMOX_OUI}:{tail}"

    # --- rendering -------------------------------------------------------------------------------

    @staticmethod
    def config_text(vm: Vm) -> str:
        """/etc/pve/qemu-server/<vmid>.conf as PVE::QemuServer::write_vm_config writes it."""
        lines = []
        if "description" in vm.config:  # written as comment lines on top of the file
            lines += [f"#{line}" for line in str(vm.config["description"]).split("\n")]
        lines += [f"{key}: {value}" for key, value in sorted(vm.config.items())
                  if key not in ("description", "digest")]
        if vm.pending or vm.pending_delete:
            lines += ["", "[PENDING]"]
            lines += [f"{key}: {value}" for key, value in sorted(vm.pending.items())]
            if vm.pending_delete:
                lines.append(f"delete: {','.join(vm.pending_delete)}")
        return "\n".join(lines) + "\n"

    def config_digest(self, vm: Vm) -> str:
        return hashlib.sha1(self.config_text(vm).encode()).hexdigest()

    def mapping_digest(self) -> str:
        """SHA-1 over all of mapping/pci.cfg: any change to any mapping changes it."""
        text = json.dumps({mapping_id: mapping.as_config()
                           for mapping_id, mapping in sorted(self.mappings.items())})
        return hashlib.sha1(text.encode()).hexdigest()

    def new_uuid(self) -> str:
        return str(uuid.UUID(int=self.random.getrandbits(128), version=4))
