"""SSH ports for lab hosts, reserved machine-wide rather than per lab.

A port that is free this instant is not enough. A host's QEMU lets go of its forwarded port
each time the host is power-cycled, and a port picked for a new host is not bound until its
QEMU starts. Another lab on the same machine (a second test worker, a user's own lab) could
take the port in either gap, and the host would then come back unreachable. So every port a
lab host gets is recorded in one registry per user, with the host that owns it.

A record stands while its owner's ``host.json`` names that port, or, before that file is
written, while the process that made the record runs. Anything else is stale and is reused:
a destroyed host, or a test lab whose directory was deleted, frees its ports by itself.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from gpuprov.errors import EnvironmentProblem
from gpuprov.lab.locking import exclusive

FIRST_SSH_PORT = 2222
LAST_SSH_PORT = 65535


def default_registry() -> Path:
    # Per user, in the temporary directory: the records outlive no reboot, nor need to.
    return Path(tempfile.gettempdir()) / f"gpuprov-{os.getuid()}-ports"


def port_free(port: int) -> bool:
    """Whether nothing listens on ``port`` of 127.0.0.1 right now (a bind test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class PortRegistry:
    def __init__(self, root: Path | None = None,
                 bindable: Callable[[int], bool] = port_free) -> None:
        self.root = root or default_registry()
        self.bindable = bindable

    def reserve(self, owners: list[Path], first: int | None = None,
                taken: frozenset[int] = frozenset()) -> list[int]:
        """One port for each owner (the path of a host's ``host.json``, which need not exist
        yet), in order, none of them in ``taken``. With ``first``, the ports are ``first``,
        ``first + 1``, ... or EnvironmentProblem names the one that is taken; otherwise the
        lowest free ones."""
        if not owners:
            return []
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        with exclusive(self.root):
            if first is not None:
                ports = list(range(first, first + len(owners)))
                for port in ports:
                    if port in taken or not self._available(port):
                        raise EnvironmentProblem(
                            f"port {port} on 127.0.0.1 is already in use",
                            "choose another --ssh-port, or leave it out to pick free ports")
            else:
                ports, port = [], FIRST_SSH_PORT
                while len(ports) < len(owners):
                    if port > LAST_SSH_PORT:
                        raise EnvironmentProblem(
                            f"no free TCP port on 127.0.0.1 from {FIRST_SSH_PORT} up",
                            f"destroy lab hosts you no longer need, or clear {self.root}")
                    if port not in taken and self._available(port):
                        ports.append(port)
                    port += 1
            for port, owner in zip(ports, owners, strict=True):
                record = {"owner": str(owner.absolute()), "pid": os.getpid()}
                (self.root / str(port)).write_text(json.dumps(record) + "\n")
        return ports

    def release(self, port: int, owner: Path) -> None:
        """Forget ``owner``'s record of ``port``, if it is still that owner's."""
        if not self.root.is_dir():
            return
        with exclusive(self.root):
            if self._record(port).get("owner") == str(owner.absolute()):
                (self.root / str(port)).unlink(missing_ok=True)

    def _available(self, port: int) -> bool:
        return not self._held(port) and self.bindable(port)

    def _held(self, port: int) -> bool:
        record = self._record(port)
        if not record:
            return False
        try:
            spec = json.loads(Path(record["owner"]).read_text())
        except (OSError, ValueError, KeyError, TypeError):
            # No host.json (yet): the record stands while the process that made it runs.
            return _running(record.get("pid"))
        return isinstance(spec, dict) and spec.get("ssh_port") == port

    def _record(self, port: int) -> dict:
        try:
            record = json.loads((self.root / str(port)).read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}


def _running(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
