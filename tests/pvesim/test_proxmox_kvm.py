"""A client we did not write: Ansible's proxmox_kvm module against the simulator.

The module (community.general.proxmox_kvm, which Ansible 12 redirects to
community.proxmox.proxmox_kvm) runs in a real `ansible-playbook` subprocess and talks proxmoxer
over HTTPS, verifying the simulator's certificate through REQUESTS_CA_BUNDLE. What it sends is
checked against the official schema like any other request, so a simulator shaped around our
own client would show here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.pvesim import PveSimulator
from tests.pvesim.proxmox_kvm import ANSIBLE_PLAYBOOK, run_playbook

GT1030_MAP = "node=pve1,path=0000:26:00,id=10de:1d01,iommugroup=15,subsystem-id=1462:8c98"

pytestmark = pytest.mark.skipif(not ANSIBLE_PLAYBOOK.exists(),
                                reason="ansible-playbook is not installed in this venv")


def test_root_password_creates_and_starts_a_raw_passthrough_vm(pve_sim: PveSimulator,
                                                                 tmp_path: Path) -> None:
    root = {"api_user": "root@pam", "api_password": pve_sim.root_password}
    created, started = run_playbook(pve_sim, tmp_path, root, [
        {"name": "gpu-worker", "machine": "q35", "bios": "ovmf", "cpu": "host", "cores": 4,
         "memory": 8192, "scsihw": "virtio-scsi-single",
         # All four sub-options are given on purpose; see the test below for why.
         "efidisk0": {"storage": "local-lvm", "format": "raw", "efitype": "4m",
                      "pre_enrolled_keys": False},
         "scsi": {"scsi0": "local-lvm:32,iothread=1"},
         "net": {"net0": "virtio,bridge=vmbr0"},
         "hostpci": {"hostpci0": "0000:26:00,pcie=1,x-vga=1"}},
        {"name": "gpu-worker", "state": "started"},
    ])
    assert not created.get("failed"), created
    assert created["msg"] == "VM gpu-worker with vmid 100 deployed"
    # The module reads the MAC back from the config: PVE (and pvesim) add one to every NIC.
    assert created["mac"]["net0"].startswith("BC:24:11:")
    config = pve_sim.vms[100]
    assert config["machine"] == "q35"
    assert config["bios"] == "ovmf"
    assert config["hostpci0"] == "0000:26:00,pcie=1,x-vga=1"
    # The module sends 'pre-enrolled-keys=False'; PVE parses property-string booleans and
    # stores them as 0/1, and drops the format once the volume exists.
    assert config["efidisk0"] == "local-lvm:vm-100-disk-0,efitype=4m,pre-enrolled-keys=0,size=4M"
    assert config["scsi0"] == "local-lvm:vm-100-disk-1,iothread=1,size=32G"
    assert not started.get("failed"), started
    assert pve_sim.status(100) == "running"
    assert ("POST", "/nodes/pve1/qemu/100/status/start") in pve_sim.calls


def test_token_needs_a_mapping_for_passthrough(pve_sim: PveSimulator, tmp_path: Path) -> None:
    created = requests.post(f"{pve_sim.api_url}/cluster/mapping/pci",
                            data={"id": "gt1030", "map": GT1030_MAP},
                            headers={"Authorization": f"PVEAPIToken={pve_sim.token_id}="
                                                      f"{pve_sim.token_secret}"},
                            verify=str(pve_sim.cert_path), timeout=10)
    assert created.status_code == 200, created.text
    token = {"api_user": "gpuprov@pve", "api_token_id": "ci",
             "api_token_secret": pve_sim.token_secret}
    raw, mapped, started = run_playbook(pve_sim, tmp_path, token, [
        {"vmid": 200, "name": "raw", "machine": "q35", "hostpci": {"hostpci0": "0000:26:00"}},
        {"vmid": 201, "name": "mapped", "machine": "q35", "bios": "ovmf",
         "hostpci": {"hostpci0": "mapping=gt1030,pcie=1"}},
        {"vmid": 201, "state": "started"},
    ])
    assert raw["failed"]
    assert "only root can set 'hostpci0' config for non-mapped devices" in raw["msg"]
    assert 200 not in pve_sim.vms
    assert not mapped.get("failed"), mapped
    assert pve_sim.vms[201]["hostpci0"] == "mapping=gt1030,pcie=1"
    assert not started.get("failed"), started
    assert pve_sim.status(201) == "running"
    assert pve_sim.cluster.vms[201].pci_reserved == ["0000:26:00.0", "0000:26:00.1"]


def test_module_sends_format_none_when_efidisk0_format_is_omitted(pve_sim: PveSimulator,
                                                                  tmp_path: Path) -> None:
    """A real module bug the schema catches: proxmox_kvm flattens the efidisk0 dict with
    str(value), and Ansible fills omitted sub-options with None, so the API receives
    'format=None'. PVE's drive format only allows raw, qcow, qed, qcow2, vmdk, cloop."""
    root = {"api_user": "root@pam", "api_password": pve_sim.root_password}
    (result,) = run_playbook(pve_sim, tmp_path, root, [
        {"name": "uefi", "bios": "ovmf",
         "efidisk0": {"storage": "local-lvm", "efitype": "4m", "pre_enrolled_keys": True}}])
    assert result["failed"]
    assert ("efidisk0.format: value 'None' does not have a value in the enumeration "
            "'raw, qcow, qed, qcow2, vmdk, cloop'") in result["msg"]
    assert pve_sim.vms == {}
