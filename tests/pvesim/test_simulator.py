"""The simulator itself, driven with plain `requests` and with proxmoxer: schema validation with
PVE's error shapes, authentication, the root-only rules for raw devices, mappings, tasks,
start-time PCI checks and the VM life cycle."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest
import requests
from proxmoxer import ProxmoxAPI
from proxmoxer.core import ResourceException

from tests.pvesim import PveSimulator

GT1030 = "0000:26:00"  # 10de:1d01 + audio 10de:0fb8, IOMMU group 15 in the pve1 fixture
GT1030_MAP = "node=pve1,path=0000:26:00,id=10de:1d01,iommugroup=15,subsystem-id=1462:8c98"


class Client:
    """A bare HTTP client: no Proxmox library in between, so the tests see the wire."""

    def __init__(self, sim: PveSimulator, auth: str = "root"):
        self.sim = sim
        self.session = requests.Session()
        self.session.trust_env = False  # REQUESTS_CA_BUNDLE would override `verify`
        self.session.verify = str(sim.cert_path)
        if auth == "root":
            data = self.post("/access/ticket", username="root@pam",
                             password=sim.root_password).json()["data"]
            self.session.cookies.set("PVEAuthCookie", data["ticket"])
            self.session.headers["CSRFPreventionToken"] = data["CSRFPreventionToken"]
        elif auth == "token":
            self.use_token(sim.token_id, sim.token_secret)
        elif auth == "root-token":
            self.use_token(sim.root_token_id, sim.root_token_secret)

    def use_token(self, token_id: str, secret: str) -> None:
        self.session.headers["Authorization"] = f"PVEAPIToken={token_id}={secret}"

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.session.get(self.sim.api_url + path, params=params)

    def post(self, path: str, **data: Any) -> requests.Response:
        return self.session.post(self.sim.api_url + path, data=data)

    def put(self, path: str, **data: Any) -> requests.Response:
        return self.session.put(self.sim.api_url + path, data=data)

    def delete(self, path: str, **params: Any) -> requests.Response:
        return self.session.delete(self.sim.api_url + path, params=params)

    def wait(self, upid: str, node: str = "pve1") -> dict:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = self.get(f"/nodes/{node}/tasks/{upid}/status").json()["data"]
            if status["status"] == "stopped":
                return status
            time.sleep(0.02)
        raise AssertionError(f"task {upid} still running")

    def create_vm(self, vmid: int, **config: Any) -> dict:
        response = self.post("/nodes/pve1/qemu", vmid=vmid, **config)
        assert response.status_code == 200, response.text
        return self.wait(response.json()["data"])

    def start_vm(self, vmid: int) -> dict:
        response = self.post(f"/nodes/pve1/qemu/{vmid}/status/start")
        assert response.status_code == 200, response.text
        return self.wait(response.json()["data"])


@pytest.fixture
def root(pve_sim: PveSimulator) -> Client:
    return Client(pve_sim)


@pytest.fixture
def token(pve_sim: PveSimulator) -> Client:
    return Client(pve_sim, auth="token")


def errors_of(response: requests.Response) -> dict[str, str]:
    assert response.status_code == 400, response.text
    assert response.reason == "Parameter verification failed."
    body = response.json()
    assert body["data"] is None
    assert body["message"] == "Parameter verification failed.\n"
    return body["errors"]


# --- schema validation ---------------------------------------------------------------------------


def test_bad_hostpci_address_is_refused_with_pve_error_shape(root: Client) -> None:
    errors = errors_of(root.post("/nodes/pve1/qemu", vmid=100, hostpci0="0000:26:00.0.1"))
    assert errors == {"hostpci0": "invalid format - format error\n"
                                  "hostpci0.host: value does not match the regex pattern\n"}
    # Upper-case hex is not a PCI address to PVE either.
    assert "hostpci0" in errors_of(root.post("/nodes/pve1/qemu", vmid=100, hostpci0="26:0A.0"))
    errors = errors_of(root.post("/nodes/pve1/qemu", vmid=100, hostpci0=f"{GT1030},bogus=1"))
    assert errors["hostpci0"] == ("invalid format - invalid key in comma-separated list "
                                  "property: bogus\n")
    assert root.sim.vms == {}


def test_top_level_booleans_are_0_or_1_but_property_strings_take_words(root: Client) -> None:
    errors = errors_of(root.post("/nodes/pve1/qemu", vmid=100, acpi="true"))
    assert errors == {"acpi": "type check ('boolean') failed - got 'true'"}
    status = root.create_vm(100, acpi=1, machine="q35", hostpci0=f"{GT1030},pcie=yes,x-vga=on")
    assert status["exitstatus"] == "OK"
    assert root.sim.vms[100]["acpi"] == 1
    assert root.sim.vms[100]["hostpci0"] == f"{GT1030},pcie=yes,x-vga=on"  # stored as given


def test_unknown_and_out_of_range_indexed_parameters_are_refused(root: Client) -> None:
    additional = ("property is not defined in schema and the schema does not allow additional "
                  "properties")
    errors = errors_of(root.post("/nodes/pve1/qemu", vmid=100, foo="1", hostpci16=GT1030,
                                 scsi31="local-lvm:1"))
    assert errors == {"foo": additional, "hostpci16": additional, "scsi31": additional}
    status = root.create_vm(100, hostpci15=GT1030, scsi30="local-lvm:1")
    assert status["exitstatus"] == "OK"
    assert root.sim.vms[100]["scsi30"] == "local-lvm:vm-100-disk-0,size=1G"


def test_missing_required_bad_enum_and_vmid_range(root: Client) -> None:
    missing = "property is missing and it is not optional"
    assert errors_of(root.post("/cluster/mapping/pci", id="gpu")) == {"map": missing}
    assert errors_of(root.post("/nodes/pve1/qemu", name="x")) == {"vmid": missing}
    assert errors_of(root.post("/nodes/pve1/qemu", vmid=100, bios="uefi")) == {
        "bios": "value 'uefi' does not have a value in the enumeration 'seabios, ovmf'"}
    # pve-vmid's format check comes before the schema's minimum, as in PVE::JSONSchema.
    assert errors_of(root.post("/nodes/pve1/qemu", vmid=99)) == {
        "vmid": "invalid format - value does not look like a valid VM ID\n"}
    assert errors_of(root.post("/nodes/pve1/qemu", vmid=100, cores=0)) == {
        "cores": "value must have a minimum value of 1"}
    # Path parameters are parameters too.
    assert errors_of(root.get("/nodes/pve1/qemu/abc/config")) == {
        "vmid": "type check ('integer') failed - got 'abc'"}


def test_mapping_items_are_checked_against_the_item_format(root: Client) -> None:
    errors = errors_of(root.post("/cluster/mapping/pci", id="gpu",
                                 map=[GT1030_MAP, "node=pve1,path=26:00,id=10de:1d01"]))
    assert errors == {"map[1]": "invalid format - format error\n"
                                "map[1].path: value does not match the regex pattern\n"}


def test_unknown_node_and_unimplemented_methods(root: Client) -> None:
    response = root.get("/nodes/pve9/qemu")
    assert response.status_code == 500
    assert response.json()["message"].startswith("hostname lookup 'pve9' failed")
    response = root.get("/nodes/pve1/no-such-thing")
    assert (response.status_code, response.reason) == (
        501, "Method 'GET /nodes/pve1/no-such-thing' not implemented")
    # In the schema but not simulated: refused as 501, after validation.
    assert "timeframe" in errors_of(root.get("/nodes/pve1/qemu/100/rrd", ds="cpu"))
    response = root.get("/nodes/pve1/qemu/100/rrd", ds="cpu", timeframe="hour")
    assert response.status_code == 501
    assert "GET /nodes/{node}/qemu/{vmid}/rrd" in response.json()["message"]


# --- authentication ------------------------------------------------------------------------------


def test_ticket_login_and_csrf(pve_sim: PveSimulator) -> None:
    anonymous = Client(pve_sim, auth="none")
    response = anonymous.get("/version")
    assert (response.status_code, response.reason, response.content) == (401, "No ticket", b"")
    response = anonymous.post("/access/ticket", username="root@pam", password="wrong")
    assert (response.status_code, response.json()["message"]) == (401,
                                                                   "authentication failure\n")
    login = anonymous.post("/access/ticket", username="root", realm="pam",
                           password=pve_sim.root_password).json()["data"]
    assert login["username"] == "root@pam"
    assert login["ticket"].startswith("PVE:root@pam:")
    assert login["cap"]["vms"]["VM.Allocate"] == 1

    anonymous.session.cookies.set("PVEAuthCookie", login["ticket"])
    assert anonymous.get("/version").json()["data"]["release"] == "9.1"  # GET: no CSRF needed
    response = anonymous.post("/cluster/mapping/pci", id="gpu", map=GT1030_MAP)
    assert (response.status_code, response.reason) == (401,
                                                        "Permission denied - invalid csrf token")
    anonymous.session.headers["CSRFPreventionToken"] = login["CSRFPreventionToken"]
    assert anonymous.post("/cluster/mapping/pci", id="gpu", map=GT1030_MAP).status_code == 200
    assert pve_sim.mappings["gpu"]["map"] == [GT1030_MAP]


def test_api_tokens(pve_sim: PveSimulator, token: Client) -> None:
    response = token.post("/cluster/mapping/pci", id="gpu", map=GT1030_MAP)
    assert response.status_code == 200  # tokens need no CSRF header
    assert token.get("/nodes").json()["data"][0]["ssl_fingerprint"] == pve_sim.fingerprint_sha256
    token.use_token(pve_sim.token_id, "00000000-0000-0000-0000-000000000000")
    response = token.get("/nodes")
    assert (response.status_code, response.reason) == (401, "invalid token value!")
    token.use_token("gpuprov@pve!nope", pve_sim.token_secret)
    assert token.get("/nodes").reason == "no such token 'nope' for user 'gpuprov@pve'"


# --- root-only settings --------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["token", "root-token"])
def test_tokens_cannot_set_raw_host_devices_even_root_tokens(pve_sim: PveSimulator,
                                                             auth: str) -> None:
    client = Client(pve_sim, auth=auth)
    response = client.post("/nodes/pve1/qemu", vmid=100, hostpci0=f"{GT1030},pcie=1")
    assert response.status_code == 500
    assert response.json()["message"] == ("only root can set 'hostpci0' config for non-mapped "
                                          "devices\n")
    response = client.post("/nodes/pve1/qemu", vmid=100, args="-cpu host")
    assert response.json()["message"] == "only root can set 'args' config\n"
    assert pve_sim.vms == {}


def test_root_password_login_may_set_raw_devices_args_and_romfile(root: Client) -> None:
    status = root.create_vm(100, hostpci0=f"{GT1030},romfile=gt1030.rom", args="-no-hpet")
    assert status["exitstatus"] == "OK"
    assert status["user"] == "root@pam"
    assert root.sim.vms[100]["args"] == "-no-hpet"


def test_token_with_mapping_is_allowed_but_not_romfile(pve_sim: PveSimulator, root: Client,
                                                       token: Client) -> None:
    assert root.post("/cluster/mapping/pci", id="gt1030", map=GT1030_MAP).status_code == 200
    errors = errors_of(token.post("/nodes/pve1/qemu", vmid=100,
                                  hostpci0="mapping=gt1030,romfile=x.rom"))
    assert errors == {"hostpci0": "only root@pam can set 'romfile' option"}
    status = token.create_vm(100, machine="q35", hostpci0="mapping=gt1030,pcie=1")
    assert status["exitstatus"] == "OK"
    assert status["user"] == "gpuprov@pve!ci"
    assert token.start_vm(100)["exitstatus"] == "OK"
    assert pve_sim.status(100) == "running"
    # Removing a raw device again is as privileged as adding it.
    root.put("/nodes/pve1/qemu/100/config", hostpci1="0000:2d:00")
    response = token.put("/nodes/pve1/qemu/100/config", delete="hostpci1")
    assert response.json()["message"] == ("only root can set 'hostpci1' config for non-mapped "
                                          "devices\n")


# --- mappings ------------------------------------------------------------------------------------


def test_mapping_create_list_check_and_duplicate(root: Client) -> None:
    assert root.post("/cluster/mapping/pci", id="gt1030", map=GT1030_MAP,
                     description="GT 1030").status_code == 200
    response = root.post("/cluster/mapping/pci", id="gt1030", map=GT1030_MAP)
    assert (response.status_code, response.json()["message"]) == (
        500, "create hardware mapping failed: pci ID 'gt1030' already defined\n")
    root.post("/cluster/mapping/pci", id="stale",
              map="node=pve1,path=0000:2d:00,id=10de:2206,iommugroup=23,subsystem-id=3842:3987")
    root.post("/cluster/mapping/pci", id="elsewhere", map=GT1030_MAP.replace("pve1", "pve2"))
    listing = {m["id"]: m for m in root.get("/cluster/mapping/pci",
                                            **{"check-node": "pve1"}).json()["data"]}
    assert listing["gt1030"]["checks"] == []
    assert listing["gt1030"]["description"] == "GT 1030"
    assert listing["stale"]["checks"] == [{
        "severity": "error",
        "message": "Invalid configuration: 'id' does not match for 'stale' "
                   "(10de:2204 != 10de:2206)\n"}]
    assert listing["elsewhere"]["checks"] == [{"severity": "warning",
                                               "message": "No mapping for node pve1."}]
    assert "checks" not in root.get("/cluster/mapping/pci").json()["data"][0]
    single = root.get("/cluster/mapping/pci/gt1030").json()["data"]
    assert single["map"] == [GT1030_MAP]
    assert root.get("/cluster/mapping/pci/nope").json()["message"] == "mapping 'nope' not found\n"
    assert root.delete("/cluster/mapping/pci/stale").status_code == 200
    assert set(root.sim.mappings) == {"gt1030", "elsewhere"}


def test_mapping_is_resolved_when_the_vm_starts(root: Client) -> None:
    # PVE does not look the mapping up when the config is written, only at start.
    root.create_vm(100, hostpci0="mapping=missing")
    assert root.start_vm(100)["exitstatus"] == "PCI device mapping not found for 'missing'"
    root.post("/cluster/mapping/pci", id="elsewhere", map=GT1030_MAP.replace("pve1", "pve2"))
    root.create_vm(101, hostpci0="mapping=elsewhere")
    assert root.start_vm(101)["exitstatus"] == "PCI device mapping not found for 'elsewhere'"


def test_host_or_mapping_is_enforced_where_pve_enforces_it(root: Client, token: Client) -> None:
    # Not a schema rule: for tokens the permission check refuses it, for root@pam the start.
    response = token.post("/nodes/pve1/qemu", vmid=100, hostpci0="pcie=1")
    assert response.json()["message"] == "either 'host' or 'mapping' must be set.\n"
    root.create_vm(100, hostpci0="pcie=1")
    assert root.start_vm(100)["exitstatus"] == "Either 'host' or 'mapping' must be set."
    root.create_vm(101, hostpci0=f"{GT1030},mapping=gt1030")
    assert root.start_vm(101)["exitstatus"] == "Cannot set both 'host' and 'mapping'."


# --- ids, tasks ----------------------------------------------------------------------------------


def test_nextid_is_a_string(root: Client) -> None:
    assert root.get("/cluster/nextid").json() == {"data": "100"}
    root.create_vm(100)
    root.create_vm(102)
    assert root.get("/cluster/nextid").json()["data"] == "101"
    assert root.get("/cluster/nextid", vmid=105).json()["data"] == "105"
    assert errors_of(root.get("/cluster/nextid", vmid=100)) == {"vmid": "VM 100 already exists"}
    response = root.post("/nodes/pve1/qemu", vmid=100)
    assert response.json()["message"] == ("unable to create VM 100 - VM 100 already exists on "
                                          "node 'pve1'\n")


def test_task_status_goes_running_to_stopped_and_log_pages(pve_sim: PveSimulator,
                                                            root: Client) -> None:
    with pve_sim.hold_tasks():
        upid = root.post("/nodes/pve1/qemu", vmid=100, scsi0="local-lvm:32",
                         efidisk0="local-lvm:1,efitype=4m", bios="ovmf").json()["data"]
        status = root.get(f"/nodes/pve1/tasks/{upid}/status").json()["data"]
        assert status["status"] == "running"
        assert "exitstatus" not in status
        assert pve_sim.vms[100] == {"lock": "create"}  # the config exists, locked, at once
    assert upid.startswith("UPID:pve1:") and upid.endswith(":qmcreate:100:root@pam:")
    status = root.wait(upid)
    assert (status["exitstatus"], status["type"], status["id"]) == ("OK", "qmcreate", "100")
    log = root.get(f"/nodes/pve1/tasks/{upid}/log").json()
    assert [line["t"] for line in log["data"]] == [
        "efidisk0: successfully created disk 'local-lvm:vm-100-disk-0,efitype=4m,size=4M'",
        "scsi0: successfully created disk 'local-lvm:vm-100-disk-1,size=32G'",
        "TASK OK"]
    assert log["total"] == 3
    page = root.get(f"/nodes/pve1/tasks/{upid}/log", start=1, limit=1).json()["data"]
    assert page == [{"n": 2, "t": "scsi0: successfully created disk "
                                  "'local-lvm:vm-100-disk-1,size=32G'"}]
    assert errors_of(root.get("/nodes/pve1/tasks/UPID:nonsense/status")) == {
        "upid": "unable to parse worker upid"}


def test_created_config_is_what_pve_writes(pve_sim: PveSimulator, root: Client) -> None:
    root.create_vm(100, name="gpu1", machine="q35", bios="ovmf", cores=4, memory="8192",
                   efidisk0="local-lvm:1,efitype=4m,pre-enrolled-keys=1",
                   scsi0="local-lvm:32,iothread=1,discard=on", net0="virtio,bridge=vmbr0",
                   ide2="local:iso/debian-13.1.0-amd64-netinst.iso,media=cdrom",
                   hostpci0=f"{GT1030},pcie=1,x-vga=1")
    config = root.get("/nodes/pve1/qemu/100/config").json()["data"]
    assert config["efidisk0"] == ("local-lvm:vm-100-disk-0,efitype=4m,ms-cert=2023,"
                                  "pre-enrolled-keys=1,size=4M")
    assert config["scsi0"] == "local-lvm:vm-100-disk-1,discard=on,iothread=1,size=32G"
    assert config["ide2"] == "local:iso/debian-13.1.0-amd64-netinst.iso,media=cdrom,size=720M"
    assert config["net0"].startswith("virtio=BC:24:11:") and config["net0"].endswith(
        ",bridge=vmbr0")
    assert config["boot"] == "order=scsi0;ide2;net0"
    assert config["cores"] == 4 and config["memory"] == "8192"  # typed as PVE returns them
    assert config["digest"] == hashlib.sha1(pve_sim.config_text(100).encode()).hexdigest()
    text = pve_sim.config_text(100)
    assert "hostpci0: 0000:26:00,pcie=1,x-vga=1\n" in text
    assert text.splitlines() == sorted(text.splitlines())
    errors = errors_of(root.post("/nodes/pve1/qemu", vmid=101, scsi0="local:8"))
    assert errors == {"storage": "storage 'local' does not support vm images"}
    response = root.post("/nodes/pve1/qemu", vmid=101, scsi0="nas:8")
    assert response.json()["message"] == "storage 'nas' does not exist\n"


def test_config_update_delete_and_digest(pve_sim: PveSimulator, root: Client) -> None:
    root.create_vm(100, scsi0="local-lvm:8", cores=2)
    digest = root.get("/nodes/pve1/qemu/100/config").json()["data"]["digest"]
    assert root.put("/nodes/pve1/qemu/100/config", cores=4, digest=digest).json() == {
        "data": None}
    response = root.put("/nodes/pve1/qemu/100/config", cores=8, digest=digest)
    assert response.json()["message"] == ("detected modified configuration - file changed by "
                                          "other user? Try again.\n")
    upid = root.post("/nodes/pve1/qemu/100/config", delete="scsi0,cores").json()["data"]
    assert ":qmconfig:100:" in upid and root.wait(upid)["exitstatus"] == "OK"
    assert "cores" not in pve_sim.vms[100]
    assert pve_sim.vms[100]["unused0"] == "local-lvm:vm-100-disk-0"  # detached, not destroyed
    assert errors_of(root.put("/nodes/pve1/qemu/100/config", cores=2, delete="cores")) == {
        "delete": "you can't use '-cores' and -delete cores' at the same time"}


# --- starting VMs --------------------------------------------------------------------------------


def test_start_fails_for_missing_or_busy_devices(pve_sim: PveSimulator, root: Client) -> None:
    root.create_vm(100, hostpci0="0000:0a:00.0")
    assert root.start_vm(100)["exitstatus"] == "no PCI device found for '0000:0a:00.0'"
    root.create_vm(101, hostpci0=GT1030)
    root.create_vm(102, hostpci0="26:00.1")
    assert root.start_vm(101)["exitstatus"] == "OK"
    status = root.start_vm(102)
    assert status["exitstatus"] == "PCI device '0000:26:00.1' already in use by VMID '101'"
    assert pve_sim.status(102) == "stopped"
    log = root.get(f"/nodes/pve1/tasks/{status['upid']}/log").json()["data"]
    assert log[-1]["t"] == "TASK ERROR: PCI device '0000:26:00.1' already in use by VMID '101'"
    root.wait(root.post("/nodes/pve1/qemu/101/status/stop").json()["data"])
    assert root.start_vm(102)["exitstatus"] == "OK"


def test_pcie_needs_q35_and_passthrough_needs_iommu(pve_sim: PveSimulator,
                                                    root: Client) -> None:
    root.create_vm(100, hostpci0=f"{GT1030},pcie=1")
    assert root.start_vm(100)["exitstatus"] == "q35 machine model is not enabled"
    pve_sim.cluster.nodes["pve1"].iommu = False
    root.create_vm(101, hostpci0=GT1030)
    assert root.start_vm(101)["exitstatus"] == ("cannot prepare PCI pass-through, IOMMU not "
                                                "present")
    assert {d["iommugroup"] for d in root.get("/nodes/pve1/hardware/pci").json()["data"]} == {-1}


def test_injected_failures_and_autostart_warning(pve_sim: PveSimulator, root: Client) -> None:
    root.create_vm(100)
    pve_sim.fail_task("qmstart", "start failed: QEMU exited with code 1")
    assert root.start_vm(100)["exitstatus"] == "start failed: QEMU exited with code 1"
    assert root.start_vm(100)["exitstatus"] == "OK"  # only the next task fails
    assert root.start_vm(100)["exitstatus"] == "VM 100 already running"
    # A failed start=1 does not fail the create task; it is a warning.
    status = root.create_vm(101, hostpci0="0000:0a:00", start=1)
    assert status["exitstatus"] == "WARNINGS: 1"
    log = [line["t"] for line in root.get(f"/nodes/pve1/tasks/{status['upid']}/log")
           .json()["data"]]
    assert log[-3:] == ["Execute autostart", "WARN: no PCI device found for '0000:0a:00'",
                        "TASK WARNINGS: 1"]
    assert pve_sim.status(101) == "stopped" and 101 in pve_sim.vms


def test_destroy_refuses_running_vm(pve_sim: PveSimulator, root: Client) -> None:
    root.create_vm(100, scsi0="local-lvm:8", start=1)
    response = root.delete("/nodes/pve1/qemu/100")
    assert (response.status_code, response.json()["message"]) == (
        500, "VM 100 is running - destroy failed\n")
    root.wait(root.post("/nodes/pve1/qemu/100/status/shutdown").json()["data"])
    upid = root.delete("/nodes/pve1/qemu/100", purge=1,
                       **{"destroy-unreferenced-disks": 1}).json()["data"]
    assert root.wait(upid)["exitstatus"] == "OK"
    assert 100 not in pve_sim.vms
    assert pve_sim.cluster.nodes["pve1"].storages["local-lvm"].volumes == {}
    response = root.get("/nodes/pve1/qemu/100/config")
    assert response.json()["message"] == ("Configuration file 'nodes/pve1/qemu-server/100.conf'"
                                          " does not exist\n")


# --- inventory endpoints -------------------------------------------------------------------------


def test_pci_listing_filters_classes_like_pve(root: Client) -> None:
    devices = {d["id"]: d for d in root.get("/nodes/pve1/hardware/pci").json()["data"]}
    assert devices["0000:26:00.0"] == {
        "id": "0000:26:00.0", "class": "0x030000", "vendor": "0x10de", "device": "0x1d01",
        "iommugroup": 15, "vendor_name": "NVIDIA Corporation",
        "device_name": "GP108 [GeForce GT 1030]", "subsystem_vendor": "0x1462",
        "subsystem_device": "0x8c98",
        "subsystem_vendor_name": "Micro-Star International Co., Ltd. [MSI]"}
    assert devices["0000:04:00.0"]["device"] == "0x1539" and devices["0000:04:00.0"][
        "iommugroup"] == 12
    assert not any(d["class"].startswith(("0x05", "0x06", "0x0b")) for d in devices.values())
    everything = root.get("/nodes/pve1/hardware/pci", **{"pci-class-blacklist": "",
                                                         "verbose": 0}).json()["data"]
    assert {d["id"] for d in everything} > set(devices) | {"0000:00:01.1"}
    assert set(everything[0]) == {"id", "class", "vendor", "device", "iommugroup"}


def test_resources_storage_and_vm_lists(pve_sim: PveSimulator, root: Client) -> None:
    root.create_vm(100, name="gpu1", scsi0="local-lvm:32", memory="4096")
    vms = root.get("/cluster/resources", type="vm").json()["data"]
    assert [(v["id"], v["vmid"], v["node"], v["name"], v["status"], v["type"]) for v in vms] == [
        ("qemu/100", 100, "pve1", "gpu1", "stopped", "qemu")]
    assert vms[0]["maxmem"] == 4096 * 1024**2 and vms[0]["maxdisk"] == 32 * 1024**3
    storages = {s["storage"]: s for s in root.get("/nodes/pve1/storage").json()["data"]}
    assert storages["local-lvm"]["content"] == "images,rootdir"
    assert storages["local-lvm"]["used"] == 32 * 1024**3
    only_images = root.get("/nodes/pve1/storage", content="images").json()["data"]
    assert [s["storage"] for s in only_images] == ["local-lvm"]
    assert [v["vmid"] for v in root.get("/nodes/pve1/qemu").json()["data"]] == [100]
    current = root.get("/nodes/pve1/qemu/100/status/current").json()["data"]
    assert (current["status"], current["qmpstatus"], current["cpus"]) == ("stopped", "stopped", 1)
    assert ("GET", "/cluster/resources") in pve_sim.calls


# --- a real client library -----------------------------------------------------------------------


def test_proxmoxer_password_and_token_round_trip(pve_sim: PveSimulator) -> None:
    common = {"port": pve_sim.port, "verify_ssl": str(pve_sim.cert_path)}
    as_root = ProxmoxAPI(pve_sim.host, user="root@pam", password=pve_sim.root_password, **common)
    as_token = ProxmoxAPI(pve_sim.host, user="gpuprov@pve", token_name="ci",
                          token_value=pve_sim.token_secret, **common)
    assert as_root.version.get()["release"] == "9.1"
    as_root.cluster.mapping.pci.post(id="rtx3090", map=[
        "node=pve1,path=0000:2d:00,id=10de:2204,iommugroup=23,subsystem-id=3842:3987"])
    vmid = int(as_token.cluster.nextid.get())
    upid = as_token.nodes("pve1").qemu.create(vmid=vmid, name="trainer", machine="q35",
                                              hostpci0="mapping=rtx3090,pcie=1", start=1)
    deadline = time.monotonic() + 10
    while as_token.nodes("pve1").tasks(upid).status.get()["status"] != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert as_token.nodes("pve1").tasks(upid).status.get()["exitstatus"] == "OK"
    assert as_token.nodes("pve1").qemu(vmid).status.current.get()["status"] == "running"
    assert pve_sim.vms[vmid]["hostpci0"] == "mapping=rtx3090,pcie=1"
    with pytest.raises(ResourceException) as refused:
        as_token.nodes("pve1").qemu(vmid).config.put(hostpci1="0000:26:00")
    assert refused.value.status_code == 500
    assert refused.value.content == ("only root can set 'hostpci1' config for non-mapped "
                                     "devices")
    with pytest.raises(ResourceException) as invalid:
        as_root.nodes("pve1").qemu(vmid).config.put(hostpci1="0000:26:00", onboot="yes")
    assert invalid.value.errors == {"onboot": "type check ('boolean') failed - got 'yes'"}
    assert as_root.nodes("pve1").qemu(vmid).config.put(hostpci1="0000:26:00") is None
    # The VM runs: hostpci1 waits in [PENDING] until the next start, as on PVE.
    assert "hostpci1" not in pve_sim.vms[vmid]
    assert as_root.nodes("pve1").qemu(vmid).config.get()["hostpci1"] == "0000:26:00"
    assert "hostpci1" not in as_root.nodes("pve1").qemu(vmid).config.get(current=1)
    assert "[PENDING]\nhostpci1: 0000:26:00\n" in pve_sim.config_text(vmid)
