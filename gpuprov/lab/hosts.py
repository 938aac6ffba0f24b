"""The lab's state and its hosts' lifecycle: create, boot, wait for SSH, stop, destroy.

All state lives under one directory (``$GPUPROV_LAB_DIR``, default
``$XDG_STATE_HOME/gpuprov/lab``)::

    id_ed25519, id_ed25519.pub   the key every lab host trusts for root
    inventory.yml                Ansible inventory of every lab host, rewritten on each change
    hosts/<name>/                host.json, disk.qcow2 (overlay on the cached image),
                                 OVMF_VARS.fd, console.log, known_hosts, launch.json,
                                 supervisor.pid/.log/.sock, qemu.pid/.log, qmp.sock
    failures/<name>-<when>/      the console, registers and command line of every boot that
                                 failed or had to be recovered; kept after the host is gone

Each running host is a supervisor process (``gpuprov.lab.supervisor``) and its QEMU. A new host
resumes the cached checkpoint of its machine shape when there is one (``checkpoints.py``),
in a second or two; otherwise it boots, and is then checkpointed for the next time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml

from gpuprov.errors import EnvironmentProblem, LabFailure, NotFoundError, UsageError
from gpuprov.lab.checkpoints import CheckpointCache, Entry
from gpuprov.lab.image import BUILD_SPACE, ImageCache
from gpuprov.lab.locking import exclusive
from gpuprov.lab.ports import PortRegistry
from gpuprov.lab.qmp import Qmp, QmpError
from gpuprov.lab.spec import (
    GIB,
    START_MARKER,
    HostFiles,
    HostSpec,
    checkpoint_blocker,
    inventory,
    machine_key,
    qemu_argv,
    stage_key,
)
from gpuprov.lab.supervisor import LOG_FILE, Launch
from gpuprov.transport import ssh

# An overlay starts tiny but grows with every package a later stage installs.
SPACE_PER_HOST = 2 * GIB
DEFAULT_BOOT_TIMEOUT = 900
# Unix socket paths are limited to 108 bytes by the kernel.
_MAX_SOCKET_PATH = 107
# A power-on whose firmware writes nothing to the console for this long is power-cycled.
FIRMWARE_TIMEOUT = 180
_SUPERVISOR = "gpuprov.lab.supervisor"

Report = Callable[[str, str], None]
"""``report(subject, message)``: progress for one subject (a host name, or "image")."""


def default_lab_dir() -> Path:
    if env := os.environ.get("GPUPROV_LAB_DIR"):
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local/state"
    return Path(base) / "gpuprov" / "lab"


@dataclass(frozen=True)
class Tools:
    """The programs and firmware a lab host needs, found on this machine."""

    qemu: str
    qemu_img: str
    ovmf_code: Path
    ovmf_vars: Path

    @classmethod
    def find(cls) -> Tools:
        qemu = _program("GPUPROV_QEMU", "qemu-system-x86_64", "qemu-system-x86")
        qemu_img = _program("GPUPROV_QEMU_IMG", "qemu-img", "qemu-utils")
        code = _firmware("GPUPROV_OVMF_CODE", "/usr/share/OVMF/OVMF_CODE_4M.fd")
        vars_ = _firmware("GPUPROV_OVMF_VARS", "/usr/share/OVMF/OVMF_VARS_4M.fd")
        return cls(qemu, qemu_img, code, vars_)

    def fingerprint(self) -> dict[str, str]:
        """What of these tools a checkpoint depends on: QEMU's version, the firmware's bytes."""
        version = subprocess.run([self.qemu, "--version"], capture_output=True, text=True,
                                 check=False, stdin=subprocess.DEVNULL).stdout.splitlines()
        digest = hashlib.sha256(self.ovmf_code.read_bytes() + self.ovmf_vars.read_bytes())
        return {"qemu_version": version[0] if version else "unknown",
                "firmware": digest.hexdigest()[:16]}


def _program(env: str, default: str, package: str) -> str:
    wanted = os.environ.get(env, default)
    found = shutil.which(wanted)
    if not found:
        source = f"${env}" if env in os.environ else "PATH"
        raise EnvironmentProblem(
            f"{wanted} not found (looked in {source})",
            f"install it (apt-get install {package}) or point ${env} at it",
        )
    return found


def _firmware(env: str, default: str) -> Path:
    path = Path(os.environ.get(env, default))
    if not path.is_file():
        raise EnvironmentProblem(
            f"OVMF firmware not found: {path}",
            f"install it (apt-get install ovmf) or point ${env} at the file",
        )
    return path


class StageSnapshot(Protocol):
    """A stage whose result ``lab up --after`` can start from (``gpuprov.stages.snapshots``)."""

    name: str

    def inputs(self) -> dict:
        """Digests of everything that makes the stage's change: playbook, roles, variables."""

    def run(self, lab: Lab, host: str, report: Report) -> dict:
        """Run the stage for real on lab host ``host`` and verify it; what to record."""


@dataclass
class _Boot:
    """How one host of a ``lab up`` starts, and what it is checkpointed as afterwards."""

    spec: HostSpec
    image: Path
    base_key: str | None = None  # None: --cold, no checkpoints read or written
    stage_key: str | None = None
    stage_inputs: dict | None = None  # what the stage key was computed from
    entry: Entry | None = None  # the checkpoint it resumes; None: it boots

    @property
    def resumes_stage(self) -> bool:
        return self.entry is not None and self.entry.key == self.stage_key


# Run on a host resumed from a checkpoint: it is a copy of another host, so it takes its own
# name, SSH host keys, machine-id, root login key and the current time. Everything random
# comes from here: copies resumed from one checkpoint share the kernel's random state, and two
# of them were seen to draw the same machine-id from /proc/sys/kernel/random/uuid. Fresh bytes
# written to /dev/urandom make their streams differ from then on. The host keys are made here
# too, natively: generating an RSA key under software emulation takes seconds.
_IDENTITY_SCRIPT = """set -eu
printf '%s' {entropy} > /dev/urandom
date -s @{now:.3f} >/dev/null
echo {name} > /etc/hostname
sed -i '/^127\\.0\\.1\\.1[[:space:]]/d' /etc/hosts
printf '127.0.1.1\\t%s\\n' {name} >> /etc/hosts
hostname {name}
echo {machine_id} > /etc/machine-id
install -d -m 0700 /root/.ssh
printf '%s\\n' '{authorized_key}' > /root/.ssh/authorized_keys.gpuprov
chmod 0600 /root/.ssh/authorized_keys.gpuprov
mv /root/.ssh/authorized_keys.gpuprov /root/.ssh/authorized_keys
rm -f /etc/ssh/ssh_host_*
umask 077
{host_keys}
chmod 0644 /etc/ssh/ssh_host_*_key.pub
systemctl reload ssh
"""
HOST_KEY_TYPES = ("ed25519", "ecdsa", "rsa")


class Lab:
    def __init__(self, root: Path | None = None, cache: ImageCache | None = None,
                 checkpoints: CheckpointCache | None = None,
                 ports: PortRegistry | None = None) -> None:
        self.root = root or default_lab_dir()
        self.ports = ports or PortRegistry()
        self.cache = cache or ImageCache()
        self.checkpoints = checkpoints or CheckpointCache(self.cache.root / "checkpoints")
        self.private_key = self.root / "id_ed25519"
        self.inventory_file = self.root / "inventory.yml"
        self.failures_dir = self.root / "failures"

    # -- reading state ---------------------------------------------------------------------

    def files(self, name: str) -> HostFiles:
        return HostFiles(self.root / "hosts" / name)

    def names(self) -> list[str]:
        hosts = self.root / "hosts"
        return sorted(p.parent.name for p in hosts.glob("*/host.json")) if hosts.is_dir() else []

    def spec(self, name: str) -> HostSpec:
        files = self.files(name)
        if not files.spec.is_file():
            known = ", ".join(self.names()) or "none"
            raise NotFoundError(
                f"no lab host named {name!r} (lab hosts: {known})",
                f"create it with: gpuprov lab up {name}",
            )
        return HostSpec.from_json(json.loads(files.spec.read_text()))

    def pid(self, name: str) -> int | None:
        """The pid of this host's supervisor if it runs (checked, not just read from a file).

        The supervisor lives as long as the host, across the QEMU processes of its reboots.
        """
        files = self.files(name)
        return _running(files.supervisor_pidfile, [_SUPERVISOR.encode(), str(files.dir).encode()])

    def qemu_pid(self, name: str) -> int | None:
        """The pid of the QEMU running this host right now, if any."""
        files = self.files(name)
        return _running(files.pidfile, [b"qemu-system", str(files.disk).encode()])

    def status(self, name: str) -> dict:
        spec = self.spec(name)
        files = self.files(name)
        return {
            **spec.to_json(),
            "state": "running" if self.pid(name) else "stopped",
            "ssh": f"root@127.0.0.1:{spec.ssh_port}",
            "ssh_key": str(self.private_key),
            "console_log": str(files.console_log),
            "dir": str(files.dir),
        }

    def ssh_target(self, name: str) -> ssh.SshTarget:
        spec = self.spec(name)
        return ssh.SshTarget("127.0.0.1", spec.ssh_port, "root", self.private_key,
                             self.files(name).known_hosts)

    def ssh_argv(self, name: str, command: list[str]) -> list[str]:
        """OpenSSH's command line for ``gpuprov lab ssh``; refuses a stopped host."""
        target = self.ssh_target(name)
        if not self.pid(name):
            raise UsageError(f"lab host {name!r} is not running",
                             f"start it: gpuprov lab up {name}")
        return [
            "ssh", "-i", str(target.key_file), "-p", str(target.port),
            "-o", f"UserKnownHostsFile={target.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
            *(["-t"] if not command else []),
            f"{target.user}@{target.host}", *command,
        ]

    # -- changing state ----------------------------------------------------------------------

    def up(self, names: list[str], *, report: Report, ssh_port: int | None = None,
           cold: bool = False, after: StageSnapshot | None = None, **options) -> list[str]:
        """Create (or restart) ``names`` and return once every one answers SSH.

        ``options`` are HostSpec fields (iommu, boot, gpus, memory_mib, cpus); None means
        "the stored value, or the default". Everything is checked before anything changes.
        A new host resumes the cached checkpoint of its shape (or, with ``after``, of its
        shape after that stage) unless ``cold``; a host that had to boot is checkpointed.
        """
        options = {k: v for k, v in options.items() if v is not None}
        cold = cold or os.environ.get("GPUPROV_LAB_COLD", "") not in ("", "0")
        with exclusive(self.root):
            existing = set(self.names())
            specs = self._plan_specs(names, existing, ssh_port, options)
            if after and (old := sorted(existing & set(names))):
                raise UsageError(f"--after {after.name} applies only to new hosts, and "
                                 f"{', '.join(old)} exists already",
                                 f"destroy it first (gpuprov lab destroy {' '.join(old)})")
            tools = Tools.find()
            to_start = [s for s in specs if not self.pid(s.name)]
            for spec in specs:
                if spec not in to_start:
                    report(spec.name, "already running")
            self._check_space([s for s in to_start if s.name not in existing], to_start)
            self._check_socket_paths(to_start)
            if not to_start:
                return names
            images = self.cache.ensure({s.boot for s in to_start},
                                       lambda message: report("image", message))
            report("image", "ready")
            self._ensure_key()
            fingerprint = tools.fingerprint() if not cold else {}
            boots = []
            for spec in to_start:
                boot = _Boot(spec, images[spec.boot])
                if spec.name not in existing:
                    self._create(spec, boot.image, tools)
                    report(spec.name, "created")
                    blocker = None if cold else checkpoint_blocker(spec)
                    if blocker:
                        report(spec.name, f"booting, no checkpoint: {blocker}")
                    elif not cold:
                        self._choose_checkpoint(boot, fingerprint, after)
                boots.append(boot)
            self.write_inventory()
            for boot in boots:
                self._start_or_boot(boot, tools, report)
        self._wait_all(boots, report)
        if after:
            for boot in boots:
                if not boot.resumes_stage:
                    self._run_stage(boot, after, report)
        return names

    def down(self, name: str, *, timeout: float = 180) -> bool:
        """Shut ``name`` down via ACPI, forcing it off after ``timeout``; False if not running."""
        self.spec(name)
        pid = self.pid(name)
        if not pid:
            return False
        with contextlib.suppress(OSError, QmpError), Qmp(self.files(name).qmp_socket) as qmp:
            qmp.execute("system_powerdown")
        if not _wait_gone(pid, timeout):
            self._kill(name)
        return True

    def destroy(self, name: str) -> None:
        """Stop ``name`` at once and remove every file it had."""
        port = self.spec(name).ssh_port
        self._kill(name)
        shutil.rmtree(self.files(name).dir)
        self.ports.release(port, self.files(name).spec)
        self.write_inventory()

    def checkpoint(self, name: str, key: str, meta: dict) -> Entry:
        """Store running host ``name`` in the checkpoint cache under ``key``; it runs on.

        Its root account trusts the cache's key for the instant of the checkpoint, so that a
        host resumed from it in any lab can be reached once and given that lab's key.
        """
        cache_key = self.checkpoints.ensure_key().with_suffix(".pub").read_text().strip()
        with ssh.connect(self.ssh_target(name)) as client:
            _checked(client, "cat >> /root/.ssh/authorized_keys", stdin=cache_key + "\n")
        try:
            return self.checkpoints.store(key, {**meta, "spec": self.spec(name).to_json()},
                                          self.files(name).qmp_socket, self.files(name))
        finally:
            with ssh.connect(self.ssh_target(name)) as client:
                _checked(client, "sed -i '/ gpuprov-lab-checkpoints$/d' "
                                 "/root/.ssh/authorized_keys")

    def write_inventory(self) -> None:
        pairs = [(self.spec(n), self.files(n)) for n in self.names()]
        text = ("# Written by gpuprov lab; every change to the lab rewrites it.\n"
                + yaml.safe_dump(inventory(pairs, self.private_key), sort_keys=False))
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.inventory_file.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.inventory_file)

    # -- internals ---------------------------------------------------------------------------

    def _plan_specs(self, names: list[str], existing: set[str], ssh_port: int | None,
                    options: dict) -> list[HostSpec]:
        new = [n for n in names if n not in existing]
        if ssh_port is not None and len(new) != len(names):
            raise UsageError("--ssh-port applies only to new hosts",
                             "existing hosts keep their port; leave --ssh-port out")
        stored = {n: self.spec(n) for n in names if n in existing}
        for name, spec in stored.items():
            changed = {k: v for k, v in options.items() if getattr(spec, k) != v}
            if changed:
                raise UsageError(
                    f"lab host {name!r} already exists with different settings "
                    + ", ".join(f"{k}={getattr(spec, k)}" for k in changed),
                    f"destroy it first (gpuprov lab destroy {name}) to change them",
                )
        # Reserved only once the request is known to be good: bad input records nothing.
        taken = frozenset(self.spec(n).ssh_port for n in existing)
        ports = iter(self.ports.reserve([self.files(n).spec for n in new], ssh_port, taken))
        return [stored[name] if name in stored
                else HostSpec(name=name, ssh_port=next(ports), **options) for name in names]

    def _check_space(self, new: list[HostSpec], starting: list[HostSpec]) -> None:
        needs = [(self.root, SPACE_PER_HOST * len(new), f"{len(new)} new host(s)")]
        if self.cache.missing({s.boot for s in starting}):
            needs.append((self.cache.root, BUILD_SPACE, "building the lab image"))
        for path, needed, purpose in needs:
            if needed and (free := _free_bytes(path)) < needed:
                raise EnvironmentProblem(
                    f"not enough disk space in {path} for {purpose}: "
                    f"{needed / GIB:.1f} GiB needed, {free / GIB:.2f} GiB free",
                    "free some space, or point $GPUPROV_LAB_DIR / $GPUPROV_CACHE_DIR elsewhere",
                )

    def _check_socket_paths(self, specs: list[HostSpec]) -> None:
        for spec in specs:
            files = self.files(spec.name)
            for sock in (files.qmp_socket, files.supervisor_socket):
                if len(str(sock)) > _MAX_SOCKET_PATH:
                    raise EnvironmentProblem(
                        f"the lab directory's path is too long for a control socket: {sock}",
                        "use a shorter $GPUPROV_LAB_DIR",
                    )

    def _ensure_key(self) -> None:
        if self.private_key.exists():
            return
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gpuprov-lab",
                        "-f", str(self.private_key)], check=True, stdin=subprocess.DEVNULL)

    def _create(self, spec: HostSpec, image: Path, tools: Tools) -> None:
        files = self.files(spec.name)
        files.dir.mkdir(parents=True)
        try:
            self._fresh_disk(files, image, tools)
        except LabFailure:
            shutil.rmtree(files.dir)
            raise
        files.spec.write_text(json.dumps(spec.to_json(), indent=2) + "\n")

    @staticmethod
    def _fresh_disk(files: HostFiles, image: Path, tools: Tools) -> None:
        """A blank overlay on the base image and the firmware's stock UEFI variables."""
        files.disk.unlink(missing_ok=True)
        try:
            subprocess.run([tools.qemu_img, "create", "-q", "-f", "qcow2", "-F", "raw",
                            "-b", str(image), str(files.disk)], check=True,
                           capture_output=True, text=True)
        except subprocess.CalledProcessError as error:
            raise LabFailure(f"could not create {files.dir.name}'s disk: "
                             f"{error.stderr.strip()}") from error
        shutil.copyfile(tools.ovmf_vars, files.ovmf_vars)

    def _choose_checkpoint(self, boot: _Boot, fingerprint: dict,
                           after: StageSnapshot | None) -> None:
        boot.base_key = machine_key(boot.spec, image=boot.image.name, **fingerprint)
        if after:
            boot.stage_inputs = after.inputs()
            boot.stage_key = stage_key(boot.base_key, after.name, boot.stage_inputs)
            boot.entry = self.checkpoints.get(boot.stage_key)
        boot.entry = boot.entry or self.checkpoints.get(boot.base_key)
        if boot.entry:
            self.checkpoints.restore_into(boot.entry, self.files(boot.spec.name))

    def _start_or_boot(self, boot: _Boot, tools: Tools, report: Report) -> None:
        """Start ``boot``'s host; a checkpoint that does not resume is dropped for a boot."""
        spec = boot.spec
        if boot.entry and not self._start(spec, tools, boot.entry):
            files = self.files(spec.name)
            why = _last_line(files.dir / LOG_FILE)
            report(spec.name, f"checkpoint {boot.entry.key} did not resume ({why}); "
                              "dropped it, booting instead")
            self.checkpoints.discard(boot.entry.key)
            boot.entry = None
            self._fresh_disk(files, boot.image, tools)
        if not boot.entry:
            self._start(spec, tools, None)
            report(spec.name, f"booting (SSH on 127.0.0.1:{spec.ssh_port})")
        else:
            what = f"{boot.entry.meta.get('kind', 'boot')} checkpoint {boot.entry.key}"
            report(spec.name, f"resumed the {what} (SSH on 127.0.0.1:{spec.ssh_port})")

    def _start(self, spec: HostSpec, tools: Tools, entry: Entry | None) -> bool:
        """Start the host's supervisor and its QEMU; True once the guest runs, False if the
        checkpoint ``entry`` could not be resumed. A QEMU that refuses to start raises."""
        files = self.files(spec.name)
        for stale in (files.pidfile, files.supervisor_pidfile, files.qmp_socket,
                      files.supervisor_socket):
            stale.unlink(missing_ok=True)
        argv = qemu_argv(spec, files, qemu=tools.qemu, ovmf_code=tools.ovmf_code,
                         authorized_keys=self.private_key.with_suffix(".pub"))
        how = f" (resuming checkpoint {entry.key})" if entry else ""
        with open(files.console_log, "a") as log:
            log.write(f"\n{START_MARKER} {spec.name} at {time.ctime()}{how} =====\n")
        Launch(name=spec.name, argv=argv, qmp_socket=str(files.supervisor_socket),
               console_log=str(files.console_log), failures_dir=str(self.failures_dir),
               incoming=entry.incoming if entry else None,
               firmware_timeout=float(os.environ.get("GPUPROV_LAB_FIRMWARE_TIMEOUT",
                                                     FIRMWARE_TIMEOUT))).write(files.dir)
        with open(files.dir / "supervisor.out", "ab") as out:
            supervisor = subprocess.Popen(
                [sys.executable, "-m", _SUPERVISOR, str(files.dir)], stdin=subprocess.DEVNULL,
                stdout=out, stderr=out, cwd="/", start_new_session=True)
        files.supervisor_pidfile.write_text(f"{supervisor.pid}\n")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if supervisor.poll() is not None:
                break
            with contextlib.suppress(OSError, QmpError), Qmp(files.qmp_socket, 5) as qmp:
                if qmp.execute("query-status").get("running"):
                    return True
            time.sleep(0.1)
        if entry and supervisor.poll() is not None:
            return False
        self._kill(spec.name)
        detail = _last_start(files.dir / "qemu.log") or _last_line(files.dir / LOG_FILE)
        if "host forwarding" in detail:
            raise EnvironmentProblem(
                f"port {spec.ssh_port} on 127.0.0.1 is already in use; {spec.name} "
                "cannot forward SSH", f"free the port, or destroy and recreate {spec.name}")
        raise LabFailure(f"QEMU refused to start {spec.name}: {detail or 'no reason given'}",
                         f"console log: {files.console_log}")

    def _wait_all(self, boots: list[_Boot], report: Report) -> None:
        timeout = float(os.environ.get("GPUPROV_LAB_BOOT_TIMEOUT", DEFAULT_BOOT_TIMEOUT))
        deadline = time.monotonic() + timeout
        failures: dict[str, str] = {}

        def wait(boot: _Boot) -> None:
            name = boot.spec.name
            started = time.monotonic()
            target = self.ssh_target(name)
            if boot.entry:  # a copy of another host: only the cache's key gets in, once
                target = dataclasses.replace(target, key_file=self.checkpoints.key_file)
            try:
                ssh.wait_until_ready(target, deadline=deadline,
                                     why_down=lambda: self._why_down(name),
                                     trust_on_first_use=True, interval=0.5 if boot.entry else 2)
                if boot.entry:
                    self._take_identity(name, target)
            except (ssh.SshUnavailable, LabFailure) as error:
                failures[name] = error.message
                self._kill(name)
                report(name, "failed")
                return
            report(name, f"up: SSH answered after {time.monotonic() - started:.1f} s")
            if boot.base_key and not boot.entry:
                self._store(name, boot.base_key, {"kind": "boot"}, report)

        threads = [threading.Thread(target=wait, args=(b,), daemon=True) for b in boots]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            lines = "; ".join(f"{n}: {why}" for n, why in sorted(failures.items()))
            logs = ", ".join(str(self.files(n).console_log) for n in sorted(failures))
            raise LabFailure(f"lab host(s) did not come up and were stopped: {lines}",
                             f"the serial console log says why: {logs}; failed and recovered "
                             f"boots are kept in {self.failures_dir}")

    def _store(self, name: str, key: str, meta: dict, report: Report) -> None:
        try:
            entry = self.checkpoint(name, key, meta)
        except (LabFailure, ssh.SshUnavailable) as error:
            # The host itself is fine; only the next lab up of its shape will boot again.
            report(name, f"not checkpointed: {error.message}")
            return
        report(name, f"checkpointed as {entry.key} ({entry.size / 2**20:.0f} MiB) "
                     "for the next lab up")

    def _run_stage(self, boot: _Boot, stage: StageSnapshot, report: Report) -> None:
        name = boot.spec.name
        report(name, f"no {stage.name} checkpoint yet: running the stage for real")
        recorded = stage.run(self, name, report)
        if boot.stage_key:
            self._store(name, boot.stage_key, {"kind": f"after {stage.name}",
                                               "inputs": boot.stage_inputs, **recorded}, report)

    def _take_identity(self, name: str, resumed: ssh.SshTarget) -> None:
        """Make a host resumed from a checkpoint this host: see ``_IDENTITY_SCRIPT``."""
        files = self.files(name)
        with tempfile.TemporaryDirectory() as keys:
            writes, pins = [], []
            for kind in HOST_KEY_TYPES:
                key = Path(keys) / f"ssh_host_{kind}_key"
                subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"root@{name}",
                                "-f", str(key)], check=True, stdin=subprocess.DEVNULL)
                for path in (key, key.with_suffix(".pub")):
                    writes.append(f"cat > /etc/ssh/{path.name} <<'GPUPROV_KEY'\n"
                                  f"{path.read_text().strip()}\nGPUPROV_KEY")
                pins.append(" ".join(key.with_suffix(".pub").read_text().split()[:2]))
            script = _IDENTITY_SCRIPT.format(
                now=time.time(), name=name, host_keys="\n".join(writes),
                entropy=secrets.token_hex(64), machine_id=uuid.uuid4().hex,
                authorized_key=self.private_key.with_suffix(".pub").read_text().strip())
        with ssh.connect(resumed) as client:
            _checked(client, "sh -s", stdin=script)
        files.known_hosts.write_text("".join(f"{resumed.host_key_name} {pin}\n" for pin in pins))
        # Proof: the lab's own key gets in, and the host presents the key just pinned (sshd
        # is re-executing with its new keys, so the first tries may be turned away).
        ssh.wait_until_ready(self.ssh_target(name), deadline=time.monotonic() + 60,
                             why_down=lambda: self._why_down(name), interval=0.5)

    def _why_down(self, name: str) -> str | None:
        if self.pid(name) is None:
            return f"the host stopped ({_last_line(self.files(name).dir / LOG_FILE)})"
        return None

    def _kill(self, name: str) -> None:
        pid = self.pid(name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, 20):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 10)
        # A supervisor killed outright takes its QEMU along (PDEATHSIG); make sure.
        if (qemu := self.qemu_pid(name)) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(qemu, signal.SIGKILL)
            _wait_gone(qemu, 10)


def _running(pidfile: Path, needles: list[bytes]) -> int | None:
    """The pid in ``pidfile`` if that process runs and its command line holds every needle
    (a stale pidfile may name a recycled pid)."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if all(needle in cmdline for needle in needles) else None


def _checked(client, command: str, stdin: str | None = None) -> str:
    status, out, err = ssh.run(client, command, timeout=120, stdin=stdin)
    if status != 0:
        raise LabFailure(f"{command.split()[0]} on the lab host exited {status}: {err.strip()}")
    return out


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1].split(" ", 2)[-1] if lines else "no log"


def _last_start(qemu_log: Path) -> str:
    """What QEMU printed since it was last started (its errors, if it refused to run)."""
    try:
        text = qemu_log.read_text(errors="replace")
    except OSError:
        return ""
    return text.rpartition("\n== ")[2].partition("\n")[2].strip()


def _free_bytes(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _gone(pid: int) -> bool:
    # A zombie (exited, not yet reaped by whoever adopted it) has an empty command line.
    try:
        return not Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
