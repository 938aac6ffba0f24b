"""The lab's state and its hosts' lifecycle: create, boot, wait for SSH, stop, destroy.

All state lives under one directory (``$GPUPROV_LAB_DIR``, default
``$XDG_STATE_HOME/gpuprov/lab``)::

    id_ed25519, id_ed25519.pub   the key every lab host trusts for root
    inventory.yml                Ansible inventory of every lab host, rewritten on each change
    hosts/<name>/                host.json, disk.qcow2 (overlay on the cached image),
                                 OVMF_VARS.fd, console.log, known_hosts, qemu.pid, qmp.sock
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from gpuprov.errors import EnvironmentProblem, LabFailure, NotFoundError, UsageError
from gpuprov.lab.image import BUILD_SPACE, ImageCache
from gpuprov.lab.spec import (
    GIB,
    START_MARKER,
    HostFiles,
    HostSpec,
    boot_failure,
    inventory,
    process_name,
    qemu_argv,
)
from gpuprov.transport import ssh

FIRST_SSH_PORT = 2222
# An overlay starts tiny but grows with every package a later stage installs.
SPACE_PER_HOST = 2 * GIB
DEFAULT_BOOT_TIMEOUT = 900
# Unix socket paths are limited to 108 bytes by the kernel.
_MAX_SOCKET_PATH = 107

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


class Lab:
    def __init__(self, root: Path | None = None, cache: ImageCache | None = None) -> None:
        self.root = root or default_lab_dir()
        self.cache = cache or ImageCache()
        self.private_key = self.root / "id_ed25519"
        self.inventory_file = self.root / "inventory.yml"

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
        """The pid of this host's QEMU if it is running (checked, not just read from a file)."""
        files = self.files(name)
        try:
            pid = int(files.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        # A stale pidfile may name a recycled pid: only a QEMU running this host's disk counts.
        ours = process_name(name).encode() in b" ".join(cmdline) and any(
            str(files.disk).encode() in arg for arg in cmdline
        )
        return pid if ours else None

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
           **options) -> list[str]:
        """Create (or restart) ``names`` and return once every one answers SSH.

        ``options`` are HostSpec fields (iommu, boot, gpus, memory_mib, cpus); None means
        "the stored value, or the default". Everything is checked before anything changes.
        """
        options = {k: v for k, v in options.items() if v is not None}
        with self._locked():
            existing = set(self.names())
            specs = self._plan_specs(names, existing, ssh_port, options)
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
            for spec in to_start:
                if spec.name not in existing:
                    self._create(spec, images[spec.boot], tools)
                    report(spec.name, "created")
            self.write_inventory()
            for spec in to_start:
                self._start(spec, tools)
                report(spec.name, f"booting (SSH on 127.0.0.1:{spec.ssh_port})")
        self._wait_all(to_start, report)
        return names

    def down(self, name: str, *, timeout: float = 180) -> bool:
        """Shut ``name`` down via ACPI, forcing it off after ``timeout``; False if not running."""
        self.spec(name)
        pid = self.pid(name)
        if not pid:
            return False
        with contextlib.suppress(OSError):
            _qmp(self.files(name).qmp_socket, "system_powerdown")
        if not _wait_gone(pid, timeout):
            self._kill(name)
        return True

    def destroy(self, name: str) -> None:
        """Stop ``name`` at once and remove every file it had."""
        self.spec(name)
        self._kill(name)
        shutil.rmtree(self.files(name).dir)
        self.write_inventory()

    def write_inventory(self) -> None:
        pairs = [(self.spec(n), self.files(n)) for n in self.names()]
        text = ("# Written by gpuprov lab; every change to the lab rewrites it.\n"
                + yaml.safe_dump(inventory(pairs, self.private_key), sort_keys=False))
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.inventory_file.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.inventory_file)

    # -- internals ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _plan_specs(self, names: list[str], existing: set[str], ssh_port: int | None,
                    options: dict) -> list[HostSpec]:
        new = [n for n in names if n not in existing]
        if ssh_port is not None and len(new) != len(names):
            raise UsageError("--ssh-port applies only to new hosts",
                             "existing hosts keep their port; leave --ssh-port out")
        taken = {self.spec(n).ssh_port for n in existing}
        ports = iter(self._pick_ports(len(new), ssh_port, taken))
        specs = []
        for name in names:
            if name in existing:
                stored = self.spec(name)
                changed = {k: v for k, v in options.items() if getattr(stored, k) != v}
                if changed:
                    raise UsageError(
                        f"lab host {name!r} already exists with different settings "
                        + ", ".join(f"{k}={getattr(stored, k)}" for k in changed),
                        f"destroy it first (gpuprov lab destroy {name}) to change them",
                    )
                specs.append(stored)
            else:
                specs.append(HostSpec(name=name, ssh_port=next(ports), **options))
        return specs

    @staticmethod
    def _pick_ports(count: int, first: int | None, taken: set[int]) -> list[int]:
        if first is not None:
            ports = list(range(first, first + count))
            for port in ports:
                if port in taken or not _port_free(port):
                    raise EnvironmentProblem(
                        f"port {port} on 127.0.0.1 is already in use",
                        "choose another --ssh-port, or leave it out to pick free ports",
                    )
            return ports
        ports, port = [], FIRST_SSH_PORT
        while len(ports) < count:
            if port not in taken and _port_free(port):
                ports.append(port)
            port += 1
        return ports

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
            sock = self.files(spec.name).qmp_socket
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
            subprocess.run([tools.qemu_img, "create", "-q", "-f", "qcow2", "-F", "raw",
                            "-b", str(image), str(files.disk)], check=True,
                           capture_output=True, text=True)
        except subprocess.CalledProcessError as error:
            shutil.rmtree(files.dir)
            raise LabFailure(f"could not create {spec.name}'s disk: {error.stderr.strip()}") \
                from error
        shutil.copyfile(tools.ovmf_vars, files.ovmf_vars)
        files.spec.write_text(json.dumps(spec.to_json(), indent=2) + "\n")

    def _start(self, spec: HostSpec, tools: Tools) -> None:
        files = self.files(spec.name)
        files.pidfile.unlink(missing_ok=True)
        argv = qemu_argv(spec, files, qemu=tools.qemu, ovmf_code=tools.ovmf_code,
                         authorized_keys=self.private_key.with_suffix(".pub"))
        with open(files.console_log, "a") as log:
            log.write(f"\n{START_MARKER} {spec.name} at {time.ctime()} =====\n")
        # -daemonize returns once QEMU has set up every device, so a bad argument or a port
        # grabbed since we checked is reported here, synchronously.
        result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                check=False)
        if result.returncode != 0:
            detail = result.stderr.strip() or f"exit status {result.returncode}"
            if "host forwarding" in detail:
                raise EnvironmentProblem(
                    f"port {spec.ssh_port} on 127.0.0.1 is already in use; {spec.name} "
                    "cannot forward SSH", f"free the port, or destroy and recreate {spec.name}")
            raise LabFailure(f"QEMU refused to start {spec.name}: {detail}",
                             f"console log: {files.console_log}")

    def _wait_all(self, specs: list[HostSpec], report: Report) -> None:
        timeout = float(os.environ.get("GPUPROV_LAB_BOOT_TIMEOUT", DEFAULT_BOOT_TIMEOUT))
        deadline = time.monotonic() + timeout
        failures: dict[str, str] = {}

        def wait(spec: HostSpec) -> None:
            started = time.monotonic()
            try:
                ssh.wait_until_ready(self.ssh_target(spec.name), deadline=deadline,
                                     why_down=lambda: self._why_down(spec.name),
                                     trust_on_first_use=True)
            except ssh.SshUnavailable as error:
                failures[spec.name] = error.message
                self._kill(spec.name)
                report(spec.name, "failed")
            else:
                report(spec.name, f"up: SSH answered after {time.monotonic() - started:.0f} s")

        threads = [threading.Thread(target=wait, args=(s,), daemon=True) for s in specs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            lines = "; ".join(f"{n}: {why}" for n, why in sorted(failures.items()))
            logs = ", ".join(str(self.files(n).console_log) for n in sorted(failures))
            raise LabFailure(f"lab host(s) did not come up and were stopped: {lines}",
                             f"the serial console log says why: {logs}")

    def _why_down(self, name: str) -> str | None:
        if self.pid(name) is None:
            return "QEMU exited"
        try:
            console = self.files(name).console_log.read_text(errors="replace")
        except OSError:
            return None
        return boot_failure(console)

    def _kill(self, name: str) -> None:
        pid = self.pid(name)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, 10):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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


def _qmp(socket_path: Path, command: str) -> None:
    """Send one QMP command (after the capabilities handshake QEMU requires)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(str(socket_path))
        stream = conn.makefile("rw")
        stream.readline()  # the greeting
        for execute in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": execute}) + "\n")
            stream.flush()
            stream.readline()
