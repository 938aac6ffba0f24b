"""``gpuprov host inspect``: SSH -> run the probe -> parse -> verdicts.

One SSH session runs ``gpuprov/facts/probe.sh`` as root; everything after that is pure
(``gpuprov.facts`` parses, ``gpuprov.plan`` decides).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import paramiko

from gpuprov import inventory as inventory_
from gpuprov.errors import GpuprovError, HostUnreachable
from gpuprov.facts import HostFacts, parse_address, parse_host_facts
from gpuprov.plan import (
    GpuVerdict,
    KernelParams,
    gpu_verdicts,
    inspect_exit_code,
    kernel_params,
    select_gpus,
)
from gpuprov.transport import ssh

PROBE_TIMEOUT = 120


@dataclass(frozen=True)
class InspectResult:
    host: str
    address: str  # user@host:port
    facts: HostFacts
    kernel_params: KernelParams
    verdicts: tuple[GpuVerdict, ...]

    @property
    def exit_code(self) -> int:
        return inspect_exit_code(self.verdicts)

    def to_json(self) -> dict:
        return {
            "host": self.host,
            "ssh": self.address,
            "exit_code": self.exit_code,
            "facts": self.facts.to_json(),
            "kernel_params": self.kernel_params.to_json(),
            "gpus": [v.to_json() for v in self.verdicts],
        }


def probe_script() -> str:
    return resources.files("gpuprov.facts").joinpath("probe.sh").read_text()


def probe_command(user: str, args: Sequence[str] = ()) -> str:
    """Root runs the probe directly; anyone else through passwordless sudo, keeping
    $SSH_CONNECTION (sudo drops it) so the probe can find the management NIC."""
    command = "sh -s" + "".join(f" {shlex.quote(a)}" for a in ("--", *args) if args)
    if user == "root":
        return command
    return f'sudo -n env SSH_CONNECTION="$SSH_CONNECTION" {command}'


@contextmanager
def session(name: str, target: ssh.SshTarget) -> Iterator[Callable[..., str]]:
    """One SSH connection to ``target``; yields ``run(script, *args)``, which runs a read-only
    shell script there as root and returns its output."""
    where = f"{target.user}@{target.host}:{target.port}"
    try:
        client = ssh.connect(target)
    except ssh.SshUnavailable as error:
        raise HostUnreachable(
            f"cannot reach {name} over SSH ({where}): {error.__cause__ or error.message}",
            f"check that {name} is up and its sshd listens on port {target.port}, that the key "
            f"is accepted, and that its host key is in {target.known_hosts}"
            " (for a lab host: gpuprov lab list)") from error

    def run(script: str, *args: str) -> str:
        try:
            status, out, err = ssh.run(client, probe_command(target.user, args),
                                       timeout=PROBE_TIMEOUT, stdin=script)
        except (OSError, paramiko.SSHException) as error:
            raise HostUnreachable(f"the SSH session to {name} ({where}) broke: {error}") from error
        if status != 0 or not out.strip():
            detail = (err.strip().splitlines() or [f"exit status {status}"])[-1]
            raise GpuprovError(
                f"the probe failed on {name} ({where}): {detail}",
                "connect as root, or give the user passwordless sudo" if target.user != "root"
                else None)
        return out

    with client:
        yield run


def gather(name: str, target: ssh.SshTarget) -> str:
    """The probe's output from ``target`` (one SSH session)."""
    with session(name, target) as run:
        return run(probe_script())


def run(host: str, *, inventory: Path | None = None, gpus: Sequence[str] = ()) -> InspectResult:
    selectors = [parse_address(a) for a in gpus]  # bad input fails before any SSH
    target = inventory_.resolve(host, inventory)
    facts = parse_host_facts(gather(host, target))
    chosen = select_gpus(facts, selectors, host)
    return InspectResult(
        host=host,
        address=f"{target.user}@{target.host}:{target.port}",
        facts=facts,
        kernel_params=kernel_params(facts),
        verdicts=tuple(gpu_verdicts(facts, chosen)),
    )


def run_many(hosts: Sequence[str], *, inventory: Path | None = None, gpus: Sequence[str] = (),
             forks: int = 16) -> list[InspectResult | GpuprovError]:
    """``run`` on every host, ``forks`` at once; each host's result or error, in order."""
    from gpuprov.stages.engine import in_parallel

    def one(host: str) -> InspectResult | GpuprovError:
        try:
            return run(host, inventory=inventory, gpus=gpus)
        except GpuprovError as error:
            return error

    return in_parallel(one, hosts, forks)
