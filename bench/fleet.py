"""`host inspect` across 32 SSH endpoints against 1: what the parallel gather costs.

    .venv/bin/python bench/fleet.py [--hosts 32] [--repeat 3]

Each endpoint is an sshd of its own on a loopback port of this machine, and an inventory host
of its own; the probe runs on this machine through each of them, as root. The figures are
the median wall time of the whole `gpuprov host inspect` command, start-up included, and the
ratio (goal: 1.5 or less), then the CPU each run cost gpuprov and the endpoints. On a small
machine the endpoints' own share (sshd and the probe, on the same cores) bounds the ratio, so
the bench also prints that bound, and what sshd alone costs per login (`ssh ENDPOINT true`).
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

GPUPROV = str(Path(sys.executable).with_name("gpuprov"))
SSHD = "/usr/sbin/sshd"


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _endpoints(work: Path, count: int) -> tuple[Path, list[subprocess.Popen]]:
    """``count`` sshd processes and an inventory naming each as a host."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", work / "host_key"],
                   check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", work / "client_key"],
                   check=True)
    (work / "authorized_keys").write_text((work / "client_key.pub").read_text())
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    host_key = (work / "host_key.pub").read_text().split()
    ports = _free_ports(count)
    config = work / "sshd_config"
    config.write_text(f"HostKey {work / 'host_key'}\n"
                      f"AuthorizedKeysFile {work / 'authorized_keys'}\n"
                      "ListenAddress 127.0.0.1\nPermitRootLogin prohibit-password\n"
                      "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                      "UsePAM no\nStrictModes no\nPidFile none\nMaxStartups 200\n"
                      # bash runs ~/.bashrc for every command sshd hands it, unless it is
                      # nested (SHLVL): this machine's root .bashrc starts pyenv, about 170
                      # processes per login, which no GPU host does and which would be
                      # charged to the endpoints' share of these cores.
                      "SetEnv SHLVL=1\n")
    daemons = [subprocess.Popen([SSHD, "-D", "-e", "-f", config, "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for port in ports]
    (work / "known_hosts").write_text("".join(
        f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n" for port in ports))
    hosts = {f"ep{i:02}": {
        "ansible_host": "127.0.0.1", "ansible_port": port, "ansible_user": "root",
        "ansible_ssh_private_key_file": str(work / "client_key"),
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={work / 'known_hosts'}",
    } for i, port in enumerate(ports, 1)}
    inventory = work / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    deadline = time.monotonic() + 30
    for port in ports:
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
    return inventory, daemons


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _endpoint_cpu(daemons: list[subprocess.Popen]) -> float:
    """CPU seconds the sshds and their sessions (the probes) used so far."""
    ticks = 0
    for daemon in daemons:
        fields = Path(f"/proc/{daemon.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _sshd_alone(inventory: Path, daemons: list[subprocess.Popen], logins: int = 10) -> float:
    """CPU seconds one endpoint's sshd spends on a login that runs `true`."""
    host = yaml.safe_load(inventory.read_text())["all"]["hosts"]["ep01"]
    argv = ["ssh", "-p", str(host["ansible_port"]), "-i", host["ansible_ssh_private_key_file"],
            *host["ansible_ssh_common_args"].split(), "-o", "BatchMode=yes",
            f"root@{host['ansible_host']}", "true"]
    before = _endpoint_cpu(daemons)
    for _ in range(logins):
        subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=True)
    return (_endpoint_cpu(daemons) - before) / logins


def _inspect(inventory: Path, pattern: str) -> float:
    started = time.monotonic()
    result = subprocess.run([GPUPROV, "host", "inspect", pattern, "-i", str(inventory),
                             "--json", "--forks", "32"], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, check=False)
    seconds = time.monotonic() - started
    if result.returncode not in (0, 3, 10, 20):  # no GPU here (3) is fine; SSH errors are not
        raise SystemExit(f"host inspect {pattern} exited {result.returncode}:\n{result.stderr}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not Path(SSHD).exists():
        raise SystemExit(f"{SSHD} is missing: make setup installs openssh-server")
    with tempfile.TemporaryDirectory(prefix="gpuprov-fleet-") as scratch:
        inventory, daemons = _endpoints(Path(scratch), args.hosts)
        try:
            _inspect(inventory, "ep01")  # warm the page cache and Python's bytecode
            cpu = {}
            for pattern in ("ep01", "all"):
                ours, theirs = _cpu_children(), _endpoint_cpu(daemons)
                times = [_inspect(inventory, pattern) for _ in range(args.repeat)]
                cpu[pattern] = ((_cpu_children() - ours) / args.repeat,
                                (_endpoint_cpu(daemons) - theirs) / args.repeat)
                if pattern == "ep01":
                    one = statistics.median(times)
                else:
                    many = statistics.median(times)
            login = _sshd_alone(inventory, daemons)
        finally:
            for daemon in daemons:
                daemon.terminate()
    print(f"host inspect, 1 endpoint: {one:.2f} s (median of {args.repeat})")
    print(f"host inspect, {args.hosts} endpoints: {many:.2f} s (median of {args.repeat})")
    print(f"ratio: {many / one:.2f} (goal: 1.5 or less)")
    # The endpoints run on this machine's cores too: their share bounds the ratio here.
    for pattern, label in (("ep01", "1 endpoint"), ("all", f"{args.hosts} endpoints")):
        print(f"CPU per run, {label}: gpuprov {cpu[pattern][0]:.2f} s, sshd and probes "
              f"{cpu[pattern][1]:.2f} s ({os.cpu_count()} cores)")
    # The CPU the other endpoints add, spread perfectly over this machine's cores: no gather,
    # however parallel, is faster here. With remote endpoints their share is not ours to pay.
    cores = os.cpu_count() or 1
    added = sum(cpu["all"]) - sum(cpu["ep01"])
    print(f"lowest ratio {cores} cores allow for that CPU: {(one + added / cores) / one:.2f}")
    floor = (one + (args.hosts - 1) * login / cores) / one
    print(f"sshd alone: {login * 1000:.0f} ms CPU per login; with a probe and a gpuprov that "
          f"cost nothing, the ratio here would still be {floor:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
