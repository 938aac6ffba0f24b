"""A thin paramiko layer: connect with a key, pin the host key, run a command.

Host keys are pinned per target in a known_hosts file. A target seen for the first time is
trusted only when the caller says so (``trust_on_first_use``), which the lab does for hosts it
has just created; after that a changed key is refused like OpenSSH would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from gpuprov.errors import GpuprovError

# paramiko logs every failed handshake with a traceback; failures reach callers as exceptions.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False


@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int
    user: str
    key_file: Path | None  # None: the user's default keys and SSH agent
    known_hosts: Path

    @property
    def host_key_name(self) -> str:
        # The same spelling OpenSSH uses in known_hosts, so both tools share the file.
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


class SshUnavailable(GpuprovError):
    """The target did not accept an authenticated SSH session."""


class _RecordFirstKey(paramiko.MissingHostKeyPolicy):
    def __init__(self, target: SshTarget) -> None:
        self.target = target

    def missing_host_key(self, client, hostname, key) -> None:
        keys = paramiko.HostKeys()
        if self.target.known_hosts.exists():
            keys.load(str(self.target.known_hosts))
        keys.add(self.target.host_key_name, key.get_name(), key)
        self.target.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        keys.save(str(self.target.known_hosts))


def connect(target: SshTarget, *, trust_on_first_use: bool = False,
            timeout: float = 15) -> paramiko.SSHClient:
    """An authenticated client, or SshUnavailable saying why not."""
    client = paramiko.SSHClient()
    if target.known_hosts.exists():
        client.load_host_keys(str(target.known_hosts))
    client.set_missing_host_key_policy(
        _RecordFirstKey(target) if trust_on_first_use else paramiko.RejectPolicy()
    )
    try:
        client.connect(
            target.host, port=target.port, username=target.user,
            key_filename=str(target.key_file) if target.key_file else None,
            look_for_keys=target.key_file is None, allow_agent=target.key_file is None,
            timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
        )
    except (OSError, paramiko.SSHException) as error:
        client.close()
        raise SshUnavailable(
            f"SSH to {target.user}@{target.host_key_name} failed: {error or type(error).__name__}"
        ) from error
    return client


def run(client: paramiko.SSHClient, command: str, timeout: float = 300,
        stdin: str | None = None) -> tuple[int, str, str]:
    """Run ``command`` (fed ``stdin`` if given); return its exit status, stdout and stderr."""
    channel_in, stdout, stderr = client.exec_command(command, timeout=timeout)
    if stdin is not None:
        channel_in.write(stdin)
        channel_in.flush()
        channel_in.channel.shutdown_write()
    out, err = stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
    return stdout.channel.recv_exit_status(), out, err


def wait_until_ready(
    target: SshTarget,
    *,
    deadline: float,
    why_down: Callable[[], str | None],
    trust_on_first_use: bool = False,
    interval: float = 2,
) -> None:
    """Block until an authenticated command runs on ``target``.

    Raises SshUnavailable when ``deadline`` (a ``time.monotonic()`` value) passes or as soon as
    ``why_down()`` gives a reason the machine behind the target cannot answer any more.
    """
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if reason := why_down():
            raise SshUnavailable(f"{reason} before SSH answered ({last_error})")
        try:
            client = connect(target, trust_on_first_use=trust_on_first_use, timeout=10)
        except SshUnavailable as error:
            # QEMU's port forward accepts the TCP connection before the guest's sshd is up,
            # so early attempts fail at the banner: keep trying.
            last_error = error.message
        except TimeoutError:
            last_error = "timed out"
        else:
            with client:
                status, _, _ = run(client, "true", timeout=30)
            if status == 0:
                return
            last_error = f"'true' exited {status}"
        time.sleep(interval)
    raise SshUnavailable(f"SSH did not answer in time ({last_error})")
