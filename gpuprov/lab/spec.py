"""What a lab host is, as data: its name, its virtual hardware, its QEMU command line, its disk.

Everything here is pure (no processes, no files) so the exact shape of a lab host is tested
directly; ``image.py`` and ``hosts.py`` do the I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from gpuprov.errors import UsageError

# "none" is a machine whose firmware exposes no IOMMU (VT-d / AMD-Vi disabled in its setup).
IOMMU_CHOICES = ("intel", "amd", "none")
BOOT_CHOICES = ("grub", "systemd-boot")
# A device sharing the first GPU's IOMMU group, to rehearse the cases gpuprov must refuse:
# "usb" an unrelated controller, "disk" the root disk's controller, "nic" the management NIC.
GROUP_MATE_CHOICES = ("none", "usb", "disk", "nic")

# A host name becomes a DNS label, a QEMU process name and a directory name.
_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$")

# The stand-in GPU: QEMU's std VGA (the ids Linux's bochs-drm claims) at function 0 and an
# ICH9 HD-audio controller (snd_hda_intel) at function 1, like a real card's HDMI audio.
STAND_IN_GPU_FUNCTIONS = (
    {"function": 0, "device": "VGA", "vendor_device": "1234:1111", "driver": "bochs-drm"},
    {"function": 1, "device": "ich9-intel-hda", "vendor_device": "8086:293e",
     "driver": "snd_hda_intel"},
)

# Written into a host's console log before each start, so a boot's own output can be told apart.
START_MARKER = "===== gpuprov lab: starting"
_PANIC_RE = re.compile(r"Kernel panic - not syncing: ([^\r\n]*)")

MIB = 1024 * 1024
GIB = 1024 * MIB
SECTOR = 512


def validate_name(name: str) -> str:
    """Return ``name`` if it can name a lab host, else raise a UsageError that says why."""
    if not _NAME_RE.match(name):
        raise UsageError(
            f"{name!r} is not a valid lab host name",
            "use 1-32 lower-case letters, digits and hyphens, starting with a letter "
            "and not ending with a hyphen (for example: pve1, gpu-a)",
        )
    return name


def validate_names(names: Iterable[str]) -> list[str]:
    """Validate every name and refuse duplicates, before anything is touched."""
    seen: list[str] = []
    for name in names:
        validate_name(name)
        if name in seen:
            raise UsageError(f"lab host {name!r} is named twice", "name each host once")
        seen.append(name)
    return seen


@dataclass(frozen=True)
class HostSpec:
    """The virtual machine behind one lab host."""

    name: str
    iommu: str = "intel"
    boot: str = "grub"
    gpus: int = 1
    ssh_port: int = 0
    memory_mib: int = 1024
    cpus: int = 2
    group_mate: str = "none"

    def __post_init__(self) -> None:
        validate_name(self.name)
        if self.iommu not in IOMMU_CHOICES:
            raise UsageError(f"unknown IOMMU {self.iommu!r}", f"choose one of {IOMMU_CHOICES}")
        if self.boot not in BOOT_CHOICES:
            raise UsageError(f"unknown boot loader {self.boot!r}", f"choose one of {BOOT_CHOICES}")
        if self.group_mate not in GROUP_MATE_CHOICES:
            raise UsageError(f"unknown group mate {self.group_mate!r}",
                             f"choose one of {GROUP_MATE_CHOICES}")
        if not 1 <= self.gpus <= 8:
            raise UsageError(f"{self.gpus} stand-in GPUs requested", "use 1 to 8 GPUs per host")
        if not 512 <= self.memory_mib <= 65536:
            raise UsageError(
                f"{self.memory_mib} MiB of memory requested", "use 512 to 65536 MiB per host"
            )
        if not 1 <= self.cpus <= 16:
            raise UsageError(f"{self.cpus} CPUs requested", "use 1 to 16 CPUs per host")
        if not 0 <= self.ssh_port <= 65535:
            raise UsageError(f"SSH port {self.ssh_port} is out of range", "use 1024-65535")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> HostSpec:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class HostFiles:
    """Where one host's state lives (all under its own directory)."""

    dir: Path

    @property
    def spec(self) -> Path:
        return self.dir / "host.json"

    @property
    def disk(self) -> Path:
        return self.dir / "disk.qcow2"

    @property
    def ovmf_vars(self) -> Path:
        return self.dir / "OVMF_VARS.fd"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def qmp_socket(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def supervisor_socket(self) -> Path:
        return self.dir / "supervisor.sock"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def supervisor_pidfile(self) -> Path:
        return self.dir / "supervisor.pid"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"


def process_name(name: str) -> str:
    """The name QEMU's process carries, so ``ps`` and our own liveness checks can find it."""
    return f"gpuprov-lab-{name}"


def qemu_argv(
    spec: HostSpec,
    files: HostFiles,
    *,
    qemu: str,
    ovmf_code: Path,
    authorized_keys: Path,
) -> list[str]:
    """The full QEMU command line for ``spec``: q35 + OVMF + vIOMMU + stand-in GPUs."""
    vendor = "AuthenticAMD" if spec.iommu == "amd" else "GenuineIntel"
    # The vIOMMU must come before any device it translates for.
    iommu = {
        "intel": ["-device", "intel-iommu,intremap=on,caching-mode=on"],
        # AMD's interrupt remapping in QEMU needs a split irqchip, which only KVM has.
        "amd": ["-device", "amd-iommu"],
        "none": [],
    }[spec.iommu]
    argv = [
        qemu,
        "-name", f"{process_name(spec.name)},process={process_name(spec.name)}",
        "-machine", "q35",
        # Measured: KVM hangs after the firmware on these machines; software emulation works.
        "-accel", "tcg,thread=multi",
        "-cpu", f"max,vendor={vendor}",
        "-smp", str(spec.cpus),
        "-m", str(spec.memory_mib),
        "-nodefaults",
        "-display", "none",
        "-vga", "none",
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={ovmf_code}",
        "-drive", f"if=pflash,format=raw,unit=1,file={files.ovmf_vars}",
        *iommu,
        "-drive", f"if=none,id=root,format=qcow2,file={files.disk},discard=unmap",
        "-netdev", f"user,id=mgmt,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22",
    ]
    disk = "virtio-blk-pci,drive=root,bootindex=1"
    nic = "virtio-net-pci,netdev=mgmt"
    mate = {"none": None, "usb": "qemu-xhci", "disk": disk, "nic": nic}[spec.group_mate]
    argv += [arg for device in (disk, nic) if device != mate for arg in ("-device", device)]
    for index in range(spec.gpus):
        port = f"gpu{index}"
        argv += ["-device", f"pcie-root-port,id={port},chassis={index + 1}"]
        bus, slot = port, "00"
        if index == 0 and mate:
            # Behind a PCIe-to-PCI bridge every device shares the bridge's requester id, so
            # Linux puts them all in one IOMMU group: the card and the mate are inseparable.
            bus, slot = f"{port}-pci", "01"
            argv += ["-device", f"pcie-pci-bridge,id={bus},bus={port}",
                     "-device", f"{mate},bus={bus},addr=02.0"]
        for fn in STAND_IN_GPU_FUNCTIONS:
            extra = ",multifunction=on" if fn["function"] == 0 else ""
            argv += ["-device", f"{fn['device']},bus={bus},addr={slot}.{fn['function']}{extra}"]
    argv += [
        "-fw_cfg", f"name=opt/gpuprov/authorized_keys,file={authorized_keys}",
        "-fw_cfg", f"name=opt/gpuprov/hostname,string={spec.name}",
        "-chardev", f"file,id=console,path={files.console_log},append=on",
        "-serial", "chardev:console",
        "-qmp", f"unix:{files.qmp_socket},server=on,wait=off",
        "-qmp", f"unix:{files.supervisor_socket},server=on,wait=off",
        "-pidfile", str(files.pidfile),
        # Every guest reboot ends this QEMU; the lab's supervisor starts a fresh one on the
        # same disk. A warm reset can leave OVMF spinning under TCG (shared/lab-hang); a
        # power-on cannot.
        "-no-reboot",
    ]
    return argv


@dataclass(frozen=True)
class DiskLayout:
    """A GPT disk with an EFI system partition and one ext4 root, in bytes."""

    total: int
    esp_start: int
    esp_size: int
    root_start: int
    root_size: int

    def sgdisk_args(self) -> list[str]:
        esp_first = self.esp_start // SECTOR
        esp_last = (self.esp_start + self.esp_size) // SECTOR - 1
        root_first = self.root_start // SECTOR
        root_last = (self.root_start + self.root_size) // SECTOR - 1
        return [
            "--clear",
            "--new", f"1:{esp_first}:{esp_last}", "--typecode", "1:ef00",
            "--change-name", "1:EFI system partition",
            # 8304 is "Linux x86-64 root": systemd's discoverable-partitions type.
            "--new", f"2:{root_first}:{root_last}", "--typecode", "2:8304",
            "--change-name", "2:root",
        ]


def disk_layout(total: int, esp_size: int = 256 * MIB) -> DiskLayout:
    """Lay out ``total`` bytes: 1 MiB alignment gap, the ESP, then the root up to the backup GPT."""
    if total % MIB or esp_size % MIB:
        raise ValueError("disk and ESP sizes must be whole MiB")
    esp_start = MIB
    root_start = esp_start + esp_size
    # The backup GPT takes the last 33 sectors; keep the root MiB-aligned below it.
    root_size = ((total - 33 * SECTOR - root_start) // MIB) * MIB
    if root_size < GIB:
        raise ValueError(f"a {total} byte disk leaves no room for a root file system")
    return DiskLayout(total, esp_start, esp_size, root_start, root_size)


def recipe_hash(recipe: Mapping) -> str:
    """A short, stable digest of everything that determines an image's contents."""
    canonical = json.dumps(recipe, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def inventory(hosts: Iterable[tuple[HostSpec, HostFiles]], private_key: Path) -> dict:
    """The Ansible inventory (YAML-ready) naming every lab host, for gpuprov and Ansible."""
    hostvars = {}
    for spec, files in sorted(hosts, key=lambda pair: pair[0].name):
        hostvars[spec.name] = {
            "ansible_host": "127.0.0.1",
            "ansible_port": spec.ssh_port,
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(private_key),
            "ansible_ssh_common_args": (
                f"-o UserKnownHostsFile={files.known_hosts} -o StrictHostKeyChecking=yes"
            ),
            "ansible_python_interpreter": "/usr/bin/python3",
            "gpuprov_lab_iommu": spec.iommu,
            "gpuprov_lab_boot": spec.boot,
            "gpuprov_lab_gpus": spec.gpus,
            "gpuprov_lab_group_mate": spec.group_mate,
        }
    return {"all": {"children": {"lab": {"hosts": hostvars}}}}


def boot_failure(console_log: str) -> str | None:
    """Why the latest boot in a host's console log cannot reach SSH any more, or None.

    Only a kernel panic is certain: the kernel stops for good, waiting longer does not help.
    """
    latest = console_log.rpartition(START_MARKER)[2]  # the whole log when no marker
    panic = _PANIC_RE.search(latest)
    return f"the kernel panicked ({panic.group(1).strip()})" if panic else None


def stalled_boot(console_since_power_on: str, elapsed: float, timeout: float) -> str | None:
    """Why a power-on is stuck in the firmware, or None.

    OVMF and then the boot loader write to the serial console within seconds of a power-on; a
    machine that has written nothing at all after ``timeout`` seconds is not coming up.
    """
    if console_since_power_on.strip() or elapsed < timeout:
        return None
    return f"the firmware printed nothing for {elapsed:.0f} s after power-on"


# Bump when what a checkpoint holds, or how a restored host is brought back, changes.
CHECKPOINT_FORMAT = 1


def checkpoint_blocker(spec: HostSpec) -> str | None:
    """Why QEMU cannot checkpoint a host of ``spec``'s shape, or None if it can."""
    if spec.iommu == "amd":
        # hw/i386/amd_iommu.c marks its state unmigratable (lifted only in QEMU 10.0):
        # "State blocked by non-migratable device 'amd-iommu'", measured on 7.2.
        return "QEMU cannot save the state of its AMD IOMMU"
    return None


def machine_key(spec: HostSpec, *, image: str, qemu_version: str, firmware: str) -> str:
    """The checkpoint key of a freshly booted host of ``spec``'s shape.

    A checkpoint resumes only in a QEMU with the same devices, firmware and disk image, so the
    key is the whole command line with everything host-specific (name, port, paths) held
    fixed, plus the image, QEMU's version and the firmware's digest.
    """
    shape = HostSpec(**{**spec.to_json(), "name": "lab", "ssh_port": 0})
    argv = qemu_argv(shape, HostFiles(Path("/lab")), qemu="qemu", ovmf_code=Path("/ovmf"),
                     authorized_keys=Path("/lab/key"))
    return recipe_hash({"format": CHECKPOINT_FORMAT, "shape": shape.to_json(),
                        "argv": argv[1:], "image": image,
                        "qemu": qemu_version, "firmware": firmware})


def stage_key(machine: str, stage: str, inputs: Mapping) -> str:
    """The checkpoint key of a ``machine_key`` host after ``stage`` ran on it with ``inputs``
    (the digests of the playbook, roles and code that make the change, and its variables)."""
    return recipe_hash({"format": CHECKPOINT_FORMAT, "machine": machine, "stage": stage,
                        "inputs": inputs})
