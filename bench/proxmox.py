"""Proxmox VE figures: API calls and wall time to create and start a GPU passthrough VM with
`gpuprov vm passthrough`, next to Ansible's proxmox_kvm doing the same on the same simulator.

    .venv/bin/python bench/proxmox.py [--rounds N]

Both run as a user runs them (the `gpuprov` CLI; `ansible-playbook` with two proxmox_kvm tasks:
create, then start), as root@pam with a password (the raw-address path), against the project's
PVE API simulator (tests/pvesim) with tasks finishing at once, so the figures are client cost,
not Proxmox's. The VMs are the same: q35, OVMF with a 4m EFI disk, cpu host, 4 cores, 8 GiB,
virtio-scsi-single with a 32 GiB disk, virtio NIC, the GT 1030 at 0000:26:00 with pcie=1.

What proxmox_kvm does not do, gpuprov does in its calls: check the node, the device and its
IOMMU group, that no other VM holds the card, the storage, and read the config back to report
it. gpuprov also reads the card's BARs over SSH on a real node; the simulator has no SSH, so
that read fails at once here (connection refused) and is not in the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.pvesim

from tests.pvesim import PveSimulator
from tests.pvesim.proxmox_kvm import run_playbook

GPUPROV = str(Path(sys.executable).with_name("gpuprov"))


def _gpuprov_round(sim: PveSimulator, workdir: Path, name: str) -> int:
    inventory = workdir / "hosts.ini"
    inventory.write_text(f"pve1 ansible_host=127.0.0.1 ansible_port=1 pve_api_port={sim.port} "
                         f"pve_node={sim.node} pve_ca_file={sim.cert_path}\n")
    env = {**os.environ, "GPUPROV_PVE_USER": "root@pam", "GPUPROV_PVE_PASSWORD": sim.root_password}
    completed = subprocess.run(
        [GPUPROV, "vm", "passthrough", "--hypervisor", "proxmox", "--host", "pve1",
         "-i", str(inventory), "--gpu", "26:00", "--name", name, "--cores", "4",
         "--memory", "8G", "--disk", "32G", "--storage", "local-lvm", "--json"],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"gpuprov failed:\n{completed.stdout}\n{completed.stderr}")
    return int(json.loads(completed.stdout)["vm_id"])


def _proxmox_kvm_round(sim: PveSimulator, workdir: Path, name: str) -> int:
    root = {"api_user": "root@pam", "api_password": sim.root_password}
    results = run_playbook(sim, workdir, root, [
        {"name": name, "ostype": "l26", "machine": "q35", "bios": "ovmf", "cpu": "host",
         "cores": 4, "memory": 8192, "balloon": 0, "scsihw": "virtio-scsi-single",
         "efidisk0": {"storage": "local-lvm", "format": "raw", "efitype": "4m",
                      "pre_enrolled_keys": False},
         "scsi": {"scsi0": "local-lvm:32,iothread=1,discard=on"},
         "net": {"net0": "virtio,bridge=vmbr0"},
         "hostpci": {"hostpci0": "0000:26:00,pcie=1"}},
        {"name": name, "state": "started"},
    ])
    failed = [result for result in results if result.get("failed")]
    if failed:
        raise RuntimeError(f"proxmox_kvm failed: {failed[0].get('msg')}")
    (vmid,) = [vmid for vmid, config in sim.vms.items() if config.get("name") == name]
    return vmid


def _measure(tool, sim: PveSimulator, rounds: int) -> tuple[list[float], list[int]]:
    seconds, calls = [], []
    for index in range(rounds):
        with tempfile.TemporaryDirectory(prefix="gpuprov-bench-") as scratch:
            before = len(sim.calls)
            started = time.monotonic()
            vmid = tool(sim, Path(scratch), f"bench-{index}")
            seconds.append(time.monotonic() - started)
            calls.append(len(sim.calls) - before)
        if sim.status(vmid) != "running" or "26:00" not in str(sim.vms[vmid].get("hostpci0")):
            raise RuntimeError(f"VM {vmid} is not a running passthrough VM")
        sim.remove_vm(vmid)  # the card is free again for the next round
    return seconds, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    print(f"create + start a GPU passthrough VM on the PVE API simulator, {rounds} rounds each")
    print(f"{'client':<34}{'API calls':>10}{'wall s (median)':>18}{'min':>8}{'max':>8}")
    with PveSimulator() as sim:
        sim.task_delay = 0
        for label, tool in (("gpuprov vm passthrough (CLI)", _gpuprov_round),
                            ("ansible-playbook + proxmox_kvm", _proxmox_kvm_round)):
            seconds, calls = _measure(tool, sim, rounds)
            spread = f"{min(calls)}" if min(calls) == max(calls) else f"{min(calls)}-{max(calls)}"
            print(f"{label:<34}{spread:>10}{statistics.median(seconds):>18.2f}"
                  f"{min(seconds):>8.2f}{max(seconds):>8.2f}")


if __name__ == "__main__":
    main()
