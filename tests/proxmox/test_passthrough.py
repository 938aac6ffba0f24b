"""`gpuprov vm passthrough` / `vm mapping` for Proxmox VE through the installed CLI, against the
project's PVE API simulator (tests/pvesim), which checks every request against the official API
schema. What the VM became is read from the simulator's state, never from gpuprov's output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuprov.errors import GpuprovError
from gpuprov.facts.pci import parse_address
from gpuprov.hypervisors.base import PassthroughRequest
from gpuprov.hypervisors.proxmox import ProxmoxBackend
from tests.unit.test_plan_proxmox import GT1030_RESOURCE, RTX3090_RESOURCE

GT1030, RTX3090, NVME = "26:00", "2d:00", "01:00"


def _inventory(sim, tmp_path: Path, **overrides) -> Path:
    variables = {"ansible_host": "127.0.0.1", "ansible_port": "1",  # no SSH: BARs unread
                 "pve_api_port": str(sim.port), "pve_node": sim.node,
                 "pve_ca_file": str(sim.cert_path), **overrides}
    line = " ".join(f"{k}={v}" for k, v in variables.items() if v is not None)
    path = tmp_path / "hosts.ini"
    path.write_text(f"pve1 {line}\n")
    return path


def _root(sim) -> dict:
    return {"GPUPROV_PVE_USER": "root@pam", "GPUPROV_PVE_PASSWORD": sim.root_password}


def _token(sim) -> dict:
    return {"GPUPROV_PVE_TOKEN": f"{sim.token_id}={sim.token_secret}"}


def _gpuprov(run_gpuprov, sim, tmp_path, *args, env, code=0, inventory=None):
    inventory = inventory or _inventory(sim, tmp_path)
    result = run_gpuprov("vm", *args, "--host", "pve1", "-i", str(inventory), check=False,
                         env=env)
    if code is not None:
        assert result.returncode == code, f"{result.stdout}\n{result.stderr}"
    for stream in (result.stdout, result.stderr):
        assert sim.root_password not in stream, "the password was printed"
        assert sim.token_secret not in stream, "the token secret was printed"
    return result


def _passthrough(run_gpuprov, sim, tmp_path, *args, env, code=0, inventory=None):
    return _gpuprov(run_gpuprov, sim, tmp_path, "passthrough", "--hypervisor", "proxmox",
                    *args, env=env, code=code, inventory=inventory)


def _made_vm(sim, vmid: int, **config) -> None:
    """Scene: a VM that exists before gpuprov runs, made through the API as root."""
    from proxmoxer import ProxmoxAPI

    api = ProxmoxAPI("127.0.0.1", port=sim.port, user="root@pam", password=sim.root_password,
                     verify_ssl=str(sim.cert_path))
    upid = api.nodes(sim.node).qemu.post(vmid=vmid, **config)
    for _ in range(100):
        if api.nodes(sim.node).tasks(upid).status.get()["status"] == "stopped":
            return
    raise AssertionError(f"creating scene VM {vmid} did not finish")


def test_root_password_creates_a_q35_ovmf_vm_with_the_raw_address(run_gpuprov, pve_sim,
                                                                  tmp_path):
    result = _passthrough(run_gpuprov, pve_sim, tmp_path, "--gpu", GT1030, "--name", "ml",
                          "--memory", "16G", "--cores", "8", "--json", env=_root(pve_sim))
    report = json.loads(result.stdout)
    vmid = int(report["vm_id"])
    config = pve_sim.vms[vmid]
    assert config["machine"] == "q35" and config["bios"] == "ovmf"
    assert config["hostpci0"] == "host=0000:26:00,pcie=1"
    assert "efitype=4m" in config["efidisk0"] and "pre-enrolled-keys=0" in config["efidisk0"]
    assert str(config["balloon"]) == "0" and config["cpu"] == "host"
    assert str(config["memory"]) == "16384" and str(config["cores"]) == "8"
    assert config["scsihw"] == "virtio-scsi-single"
    assert pve_sim.status(vmid) == "running" and report["started"]
    assert any(note.startswith("raw address") for note in report["notes"])
    assert any("BARs could not be read" in note for note in report["notes"])


def test_a_token_goes_through_a_pci_mapping_it_creates(run_gpuprov, pve_sim, tmp_path):
    result = _passthrough(run_gpuprov, pve_sim, tmp_path, "--gpu", GT1030, "--no-start",
                          "--json", env=_token(pve_sim))
    report = json.loads(result.stdout)
    config = pve_sim.vms[int(report["vm_id"])]
    assert config["hostpci0"] == "mapping=gpu-26-00,pcie=1"
    (entry,) = pve_sim.mappings["gpu-26-00"]["map"]
    assert "node=pve1" in entry and "path=0000:26:00" in entry and "id=10de:1d01" in entry
    assert pve_sim.status(int(report["vm_id"])) == "stopped"
    assert any("only a root@pam password" in note for note in report["notes"])

    # A second card VM through the same mapping is refused: the card is taken.
    _passthrough(run_gpuprov, pve_sim, tmp_path, "--gpu", GT1030, env=_token(pve_sim), code=20)


def test_vm_mapping_creates_and_lists(run_gpuprov, pve_sim, tmp_path):
    created = _gpuprov(run_gpuprov, pve_sim, tmp_path, "mapping", "--create", RTX3090,
                       "--name", "rtx3090", "--json", env=_token(pve_sim))
    assert json.loads(created.stdout)["created"] == "rtx3090"
    assert "path=0000:2d:00" in pve_sim.mappings["rtx3090"]["map"][0]
    listed = _gpuprov(run_gpuprov, pve_sim, tmp_path, "mapping", env=_token(pve_sim))
    assert "rtx3090" in listed.stdout
    result = _passthrough(run_gpuprov, pve_sim, tmp_path, "--gpu", RTX3090, "--mapping",
                          "rtx3090", "--x-vga", "--json", env=_token(pve_sim))
    config = pve_sim.vms[int(json.loads(result.stdout)["vm_id"])]
    assert config["hostpci0"] == "mapping=rtx3090,pcie=1,x-vga=1"


def test_attach_converts_an_existing_vm_only_when_confirmed(run_gpuprov, pve_sim, tmp_path):
    _made_vm(pve_sim, 120, name="legacy", memory="4096", scsihw="virtio-scsi-single",
             scsi0="local-lvm:8")
    before = dict(pve_sim.vms[120])
    refused = _passthrough(run_gpuprov, pve_sim, tmp_path, "--gpu", GT1030, "--vmid", "120",
                           env=_root(pve_sim), code=2)
    assert "--convert" in refused.stderr and "bios" in refused.stderr
    assert pve_sim.vms[120] == before, "a refused conversion changed the VM"

    result = _passthrough(run_gpuprov, pve_sim, tmp_path, "--gpu", GT1030, "--vm", "legacy",
                          "--convert", "--no-start", "--json", env=_root(pve_sim))
    report = json.loads(result.stdout)
    assert report["vm_id"] == "120" and not report["created"]
    config = pve_sim.vms[120]
    assert config["machine"] == "q35" and config["bios"] == "ovmf"
    assert "efidisk0" in config and str(config["balloon"]) == "0"
    assert config["hostpci0"] == "host=0000:26:00,pcie=1"
    assert config["scsi0"] == before["scsi0"], "the VM's own disk changed"


@pytest.mark.parametrize(("args", "message"), [
    (["--gpu", "0a:00"], "no PCI device at 0000:0a:00"),
    (["--gpu", NVME], "is not a GPU"),
    (["--gpu", GT1030, "--storage", "nfs-iso"], "no active storage 'nfs-iso'"),
    (["--gpu", GT1030, "--mapping", "rtx"], "maps 0000:2d:00 on node pve1, not 0000:26:00"),
    (["--gpu", GT1030, "--vm", "nosuchvm"], "has no VM 'nosuchvm'"),
    (["--gpu", GT1030, "--vmid", "110"], "VM 110 already exists"),
    (["--gpu", GT1030, "--vmid", "111"], "VM 111 is running"),
    (["--gpu", RTX3090], "already given to VM 111 (hostpci0)"),
    # Values PVE itself would refuse, checked before they reach it (exit 2).
    (["--gpu", GT1030, "--name", "a_b"], "'a_b' is not a name Proxmox VE takes"),
    (["--gpu", GT1030, "--memory", "8"], "--memory 8 MiB is outside what Proxmox VE takes"),
    (["--gpu", GT1030, "--memory", "8K"], "--memory 8K is less than 1 MiB"),
    (["--gpu", GT1030, "--memory", "99999999999T"], "is outside what Proxmox VE takes"),
    (["--gpu", GT1030, "--memory", "4T"], "more than node pve1's"),
    (["--gpu", GT1030, "--cores", "100000"], "--cores 100000 is more than node pve1's"),
    (["--gpu", GT1030, "--mapping", "x"], "'x' is not a valid PCI mapping id"),
    (["--gpu", GT1030, "--hide-hypervisor"], "--hide-hypervisor does not apply to Proxmox"),
])
def test_refusals_change_nothing(run_gpuprov, pve_sim, tmp_path, args, message):
    _made_vm(pve_sim, 111, name="busy", hostpci0="host=0000:2d:00.0", start=1)
    pve_sim.add_vm("pve2", 110, name="elsewhere")
    pve_sim.add_mapping("rtx", "node=pve1,path=0000:2d:00,id=10de:2204")
    vms, mappings = {k: dict(v) for k, v in pve_sim.vms.items()}, dict(pve_sim.mappings)
    result = _passthrough(run_gpuprov, pve_sim, tmp_path, *args, env=_root(pve_sim),
                          code=None)
    assert result.returncode in (2, 3, 20), result.stderr
    assert message in " ".join(result.stderr.split()), result.stderr
    assert {k: dict(v) for k, v in pve_sim.vms.items()} == vms
    assert dict(pve_sim.mappings) == mappings


def test_a_missing_node_is_named(run_gpuprov, pve_sim, tmp_path):
    inventory = _inventory(pve_sim, tmp_path, pve_node="pve9")
    result = _passthrough(run_gpuprov, pve_sim, tmp_path, "--gpu", GT1030, env=_root(pve_sim),
                          inventory=inventory, code=3)
    assert "no node 'pve9'" in result.stderr and "pve1" in result.stderr


def test_a_failed_start_removes_the_new_vm_unless_kept(run_gpuprov, pve_sim, tmp_path):
    pve_sim.fail_task("qmstart", "start failed: QEMU exited with code 1")
    result = _passthrough(run_gpuprov, pve_sim, tmp_path, "--gpu", GT1030, env=_root(pve_sim),
                          code=1)
    assert "starting the VM failed" in result.stderr
    assert "QEMU exited with code 1" in result.stderr  # the task's exit status and log
    assert pve_sim.vms == {}, "the half-made VM was left behind"

    pve_sim.fail_task("qmstart", "start failed: QEMU exited with code 1")
    _passthrough(run_gpuprov, pve_sim, tmp_path, "--gpu", GT1030, "--keep-on-failure",
                 env=_root(pve_sim), code=1)
    (kept,) = pve_sim.vms.values()
    assert kept["hostpci0"] == "host=0000:26:00,pcie=1"


def test_a_failed_attach_puts_the_vm_back(run_gpuprov, pve_sim, tmp_path):
    _made_vm(pve_sim, 130, name="ready", machine="q35", bios="ovmf",
             efidisk0="local-lvm:1,efitype=4m,pre-enrolled-keys=0", balloon=0)
    before = dict(pve_sim.vms[130])
    pve_sim.fail_task("qmstart", "start failed: QEMU exited with code 1")
    _passthrough(run_gpuprov, pve_sim, tmp_path, "--gpu", GT1030, "--vmid", "130",
                 env=_root(pve_sim), code=1)
    after = {k: v for k, v in pve_sim.vms[130].items() if k != "digest"}
    assert after == {k: v for k, v in before.items() if k != "digest"}


def test_logins_and_tls(run_gpuprov, pve_sim, tmp_path):
    wrong = {**_root(pve_sim), "GPUPROV_PVE_PASSWORD": "not-the-password"}
    result = _passthrough(run_gpuprov, pve_sim, tmp_path, "--gpu", GT1030, env=wrong, code=4)
    assert "refused the login of 'root@pam'" in result.stderr
    assert "not-the-password" not in result.stdout + result.stderr
    bad_token = {"GPUPROV_PVE_TOKEN": "gpuprov@pve:ci:secret"}
    result = _passthrough(run_gpuprov, pve_sim, tmp_path, "--gpu", GT1030, env=bad_token,
                          code=2)
    assert "USER@REALM!TOKENID=SECRET" in result.stderr

    untrusted = _inventory(pve_sim, tmp_path, pve_ca_file=None)
    result = _passthrough(run_gpuprov, pve_sim, tmp_path, "--gpu", GT1030, env=_root(pve_sim),
                          inventory=untrusted, code=4)
    assert "not trusted" in result.stderr
    assert "pve_fingerprint=" + pve_sim.fingerprint_sha256 in "".join(result.stderr.split())

    wrong_pin = _inventory(pve_sim, tmp_path, pve_ca_file=None, pve_fingerprint="AB" * 32)
    result = _passthrough(run_gpuprov, pve_sim, tmp_path, "--gpu", GT1030, env=_token(pve_sim),
                          inventory=wrong_pin, code=4)
    assert "does not match pve_fingerprint" in result.stderr
    assert pve_sim.vms == {}

    pinned = _inventory(pve_sim, tmp_path, pve_ca_file=None,
                        pve_fingerprint=pve_sim.fingerprint_sha256)
    for env in (_root(pve_sim), _token(pve_sim)):
        _passthrough(run_gpuprov, pve_sim, tmp_path, "--gpu", GT1030, "--no-start",
                     env=env, inventory=pinned)
        (vmid,) = pve_sim.vms
        pve_sim.remove_vm(vmid)


class FakeBarReader:
    """A fake of reading /sys/bus/pci/devices/*/resource over SSH on the node: the simulator
    has no SSH, so the files come from the captures in tests/unit/test_plan_proxmox.py."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files

    def __call__(self, name, inventory, addresses):
        from gpuprov.plan.proxmox import parse_resource

        return {a: parse_resource(self.files[a]) for a in addresses if a in self.files}


@pytest.mark.parametrize(("env", "expected"), [
    ("root", {"args": "-fw_cfg name=opt/ovmf/X-PciMmio64Mb,string=131072"}),
    ("token", {"cpu": "host,phys-bits=host"}),
])
def test_a_large_bar_card_gets_a_64bit_mmio_window(pve_sim, tmp_path, monkeypatch, env,
                                                    expected):
    for key, value in (_root(pve_sim) if env == "root" else _token(pve_sim)).items():
        monkeypatch.setenv(key, value)
    bars = FakeBarReader({"0000:2d:00.0": RTX3090_RESOURCE, "0000:26:00.0": GT1030_RESOURCE})
    backend = ProxmoxBackend(read_bars=bars)
    request = PassthroughRequest(host="pve1", gpu=parse_address(RTX3090),
                                 inventory=_inventory(pve_sim, tmp_path), start=False)
    result = backend.passthrough(request, lambda subject, message: None,
                                 lambda question, changes: False)
    config = pve_sim.vms[int(result.vm_id)]
    for key, value in expected.items():
        assert config[key] == value
    assert any("do not fit OVMF's default" in note for note in result.notes)

    small = PassthroughRequest(host="pve1", gpu=parse_address(GT1030),
                               inventory=_inventory(pve_sim, tmp_path), start=False)
    result = backend.passthrough(small, lambda subject, message: None,
                                 lambda question, changes: False)
    config = pve_sim.vms[int(result.vm_id)]
    assert "args" not in config and config["cpu"] == "host"
    with pytest.raises(GpuprovError, match="already given"):
        backend.passthrough(small, lambda subject, message: None,
                            lambda question, changes: False)


def test_a_card_without_an_iommu_group_is_refused(run_gpuprov, pve_sim, tmp_path):
    # Scene: the node booted without the IOMMU, as PVE then lists every device in group -1.
    for device in pve_sim.cluster.nodes[pve_sim.node].pci_devices:
        device["iommugroup"] = -1
    result = _passthrough(run_gpuprov, pve_sim, tmp_path, "--gpu", GT1030, env=_root(pve_sim),
                          code=20)
    assert "reports no IOMMU group for 0000:26:00.0" in " ".join(result.stderr.split())
    assert "gpuprov host setup pve1" in result.stderr
    assert pve_sim.vms == {}


def test_a_token_that_may_not_create_mappings_is_told_which_privilege(run_gpuprov, tmp_path):
    from tests.pvesim.cluster import DEFAULT_TOKEN_PRIVILEGES
    from tests.pvesim.server import PveSimulator

    user_only = frozenset(DEFAULT_TOKEN_PRIVILEGES - {"Mapping.Modify"})
    with PveSimulator(users={"ops@pve": (None, user_only)},
                      tokens={"ops@pve!use": ("s3cret-0ps-token", user_only)}) as sim:
        result = _passthrough(run_gpuprov, sim, tmp_path, "--gpu", GT1030,
                              env={"GPUPROV_PVE_TOKEN": "ops@pve!use=s3cret-0ps-token"}, code=1)
        assert "Mapping.Modify" in result.stderr
        assert "s3cret-0ps-token" not in result.stdout + result.stderr
        assert sim.vms == {} and sim.mappings == {}


def test_a_failed_create_reports_its_own_cause(run_gpuprov, pve_sim, tmp_path):
    # The create task fails before the VM exists: there is nothing to remove, and the cause
    # is what gets reported, not the cleanup's "does not exist".
    result = _passthrough(run_gpuprov, pve_sim, tmp_path, "--gpu", GT1030,
                          "--iso", "local:iso/missing.iso", env=_root(pve_sim), code=1)
    assert "creating the VM failed" in result.stderr, result.stderr
    assert "missing.iso" in result.stderr, result.stderr
    assert "reading VM" not in result.stderr and "Traceback" not in result.stderr
    assert pve_sim.vms == {}


def _ansible_inventory(path: Path) -> dict:
    """The file as Ansible itself reads it (a client we did not write)."""
    import subprocess
    import sys

    out = subprocess.run([str(Path(sys.executable).parent / "ansible-inventory"), "-i",
                          str(path), "--list"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_a_vm_with_an_address_is_recorded_for_the_next_stage(run_gpuprov, pve_sim, tmp_path):
    vms = tmp_path / "out" / "vms.yml"
    vms.parent.mkdir()
    vms.write_text("all:\n  children:\n    gpu_hosts:\n      hosts:\n        pve1: {}\n")
    first = json.loads(_passthrough(
        run_gpuprov, pve_sim, tmp_path, "--gpu", GT1030, "--name", "ml", "--address",
        "192.0.2.10", "--ssh-user", "debian", "--inventory-out", str(vms), "--json",
        env=_root(pve_sim)).stdout)
    assert first["inventory"] == {"file": str(vms), "host": "ml", "recorded": True,
                                  "vars": first["inventory"]["vars"]}
    second = _passthrough(run_gpuprov, pve_sim, tmp_path, "--gpu", RTX3090, "--name", "cad",
                          "--address", "gpu-cad.lab.example", "--inventory-out", str(vms),
                          env=_root(pve_sim))
    assert f"recorded VM cad in {vms}" in " ".join(second.stdout.split())

    seen = _ansible_inventory(vms)
    assert sorted(seen["gpuprov_vms"]["hosts"]) == ["cad", "ml"]
    assert seen["gpu_hosts"]["hosts"] == ["pve1"], "another host in the file was lost"
    ml = seen["_meta"]["hostvars"]["ml"]
    assert ml["ansible_host"] == "192.0.2.10" and ml["ansible_user"] == "debian"
    assert ml["gpuprov_hypervisor"] == "proxmox" and ml["gpuprov_hypervisor_host"] == "pve1"
    assert ml["gpuprov_vm_id"] == first["vm_id"] and int(ml["gpuprov_vm_id"]) in pve_sim.vms
    cad = seen["_meta"]["hostvars"]["cad"]
    assert cad["ansible_host"] == "gpu-cad.lab.example" and cad["ansible_user"] == "root"
    assert (vms.parent / "vms.yml.bak").exists()
    # gpuprov reads its own file as a target inventory too.
    from gpuprov import inventory

    assert inventory.hosts_matching("gpuprov_vms", vms) == ["ml", "cad"]


def test_a_vm_without_an_address_gets_the_exact_entry_printed(run_gpuprov, pve_sim, tmp_path):
    import yaml

    vms = tmp_path / "vms.yml"
    result = _passthrough(run_gpuprov, pve_sim, tmp_path, "--gpu", GT1030, "--name", "ml",
                          "--ssh-user", "debian", "--inventory-out", str(vms),
                          env=_root(pve_sim))
    assert not vms.exists()
    said, _, entry = result.stdout.partition("with ADDRESS filled in:\n")
    assert "the VM's address is not known yet" in " ".join(said.split())
    host = yaml.safe_load(entry)["gpuprov_vms"]["hosts"]["ml"]
    assert host["ansible_host"] == "ADDRESS" and host["ansible_user"] == "debian"
    assert int(host["gpuprov_vm_id"]) in pve_sim.vms


@pytest.mark.parametrize(("args", "message"), [
    (["--address", "not an address!"], "is neither an IP address nor a DNS name"),
    (["--address", "300.1.1.1"], "is neither an IP address nor a DNS name"),
    (["--ssh-user", "Bad User"], "is not a Linux user name"),
    (["--inventory-out", "."], "is a directory"),
    (["--inventory-out", "BROKEN"], "is not a YAML inventory"),
])
def test_bad_inventory_output_changes_nothing(run_gpuprov, pve_sim, tmp_path, args, message):
    broken = tmp_path / "broken.yml"
    broken.write_text("all: [\n")
    args = [str(broken) if a == "BROKEN" else str(tmp_path) if a == "." else a for a in args]
    result = _passthrough(run_gpuprov, pve_sim, tmp_path, "--gpu", GT1030, *args,
                          env=_root(pve_sim), code=2)
    assert message in " ".join(result.stderr.split()), result.stderr
    assert pve_sim.vms == {} and broken.read_text() == "all: [\n"
