"""The fabricmanager role's pure logic (roles/fabricmanager/filter_plugins): package names per
branch and the versions they must have (the builds are then chosen by pinned_packages, whose
choice is checked here on fabricmanager's own repository), and the reading of its state script
with the Error 802 diagnosis.

fixtures/fabricmanager/lab-forced-535.txt is files/fabricmanager-state.sh's real output on a lab
host after the role installed the stand-in fabricmanager 535 (tests/standins) in lockstep with
Debian's open 535.261.03 driver, forced, with no NVSwitch and no NVIDIA GPU (nvidia-smi exits 9).
The other cases change sections of it to what an HGX host or VM would print; the Fabric blocks
follow `nvidia-smi -q`'s layout (State, then Status, under each GPU's "Fabric").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuprov.ansible.roles.fabricmanager.filter_plugins.fabricmanager import (
    fabricmanager_packages,
    fabricmanager_state,
    fabricmanager_wanted,
    upstream_version,
)
from gpuprov.ansible.roles.pinned_packages.filter_plugins.pinned_packages import (
    pinned_packages_choose,
)

REAL = (Path(__file__).parent / "fixtures/fabricmanager/lab-forced-535.txt").read_text()
DRIVER = "535.261.03"
PINS = {"nvidia-fabricmanager-535": "535.261.03-1", "libnvidia-nscq-535": "535.261.03-1"}
MADISON = """\
nvidia-fabricmanager-535 | 535.309.01-1 | file:/srv/gpuprov-standin-nvidia  Packages
nvidia-fabricmanager-535 | 535.261.03-1 | file:/srv/gpuprov-standin-nvidia  Packages
libnvidia-nscq-535 | 535.309.01-1 | file:/srv/gpuprov-standin-nvidia  Packages
libnvidia-nscq-535 | 535.261.03-1 | file:/srv/gpuprov-standin-nvidia  Packages
"""
HGX_FABRIC = """\
GPU 00000000:18:00.0
    Fabric
        State                             : {state}
        Status                            : {status}
GPU 00000000:2A:00.0
    Fabric
        State                             : Completed
        Status                            : Success
exit 0
"""


def _with(text: str, **sections: str) -> str:
    """``text`` with the named sections' lines replaced (a name's "_" is the script's "-")."""
    wanted = {name.replace("_", "-"): lines for name, lines in sections.items()}
    out, skipping = [], False
    for line in text.splitlines():
        if line.startswith("== "):
            skipping = line[3:] in wanted
            out.append(line)
            if skipping:
                out.extend(wanted[line[3:]].splitlines())
        elif not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


HGX = _with(REAL, nvswitch="0000:05:00.0\n0000:06:00.0",
            service="LoadState=loaded\nActiveState=active\nSubState=running\n"
                    "UnitFileState=enabled\nConditionResult=yes\nResult=success",
            loaded=DRIVER, fabric=HGX_FABRIC.format(state="Completed", status="Success"))


@pytest.mark.parametrize(("driver", "nvlink5", "packages"), [
    ("535.261.03", False, ["nvidia-fabricmanager-535", "libnvidia-nscq-535"]),
    ("550.163.01", False, ["nvidia-fabricmanager-550", "libnvidia-nscq-550"]),
    ("575.57.08", False, ["nvidia-fabricmanager-575", "libnvidia-nscq-575"]),
    # The 580 branch drops the suffix.
    ("580.95.05", False, ["nvidia-fabricmanager", "libnvidia-nscq"]),
    ("580.95.05", True, ["nvidia-fabricmanager", "libnvidia-nscq", "nvlsm"]),
    ("1:590.44.01-1", False, ["nvidia-fabricmanager", "libnvidia-nscq"]),
])
def test_package_names_follow_the_branch(driver, nvlink5, packages):
    assert fabricmanager_packages(driver, nvlink5) == packages


def test_a_version_that_is_no_driver_version_is_refused():
    with pytest.raises(ValueError, match="is not an NVIDIA driver version"):
        fabricmanager_packages("latest")


@pytest.mark.parametrize(("version", "upstream"), [
    ("535.261.03-1", "535.261.03"), ("1:535.261.03-1~deb12u1", "535.261.03"),
    ("535.261.03", "535.261.03"), ("535.171.04-1~deb12u1", "535.171.04"),
])
def test_upstream_version(version, upstream):
    assert upstream_version(version) == upstream


def test_the_drivers_version_is_wanted_never_the_newer_one():
    assert fabricmanager_wanted(DRIVER) == dict.fromkeys(PINS, DRIVER)
    assert pinned_packages_choose(MADISON, fabricmanager_wanted(DRIVER)) == {"pins": PINS,
                                                                              "error": ""}
    # A driver with a Debian revision wants the same build.
    assert fabricmanager_wanted("535.261.03-1~deb12u1") == fabricmanager_wanted(DRIVER)


def test_a_repository_without_the_drivers_version_is_refused_with_what_it_has():
    choice = pinned_packages_choose(MADISON, fabricmanager_wanted("535.247.01"))
    assert choice["pins"] == {}
    assert choice["error"].startswith("no build of nvidia-fabricmanager-535 535.247.01 (the "
                                      "repositories have 535.309.01-1, 535.261.03-1)")


def test_nvlsm_takes_its_own_newest_version():
    madison = MADISON.replace("-535", "").replace("535.", "580.") + \
        "nvlsm | 2025.10.4-1 | file:/x  Packages\nnvlsm | 2025.06.2-1 | file:/x  Packages\n"
    wanted = fabricmanager_wanted("580.261.03", nvlink5=True)
    assert wanted == {"nvidia-fabricmanager": "580.261.03", "libnvidia-nscq": "580.261.03",
                      "nvlsm": ""}
    assert pinned_packages_choose(madison, wanted)["pins"] == {
        "nvidia-fabricmanager": "580.261.03-1", "libnvidia-nscq": "580.261.03-1",
        "nvlsm": "2025.10.4-1"}


def test_the_real_lab_output_forced_without_nvswitch_is_right():
    state = fabricmanager_state(REAL, PINS, 0)
    assert state["problems"] == [] and state["error_802"] == []
    assert state["nvswitches"] == [] and state["driver"] == DRIVER and state["loaded"] is None
    assert state["installed"] == PINS and state["fabric_mode"] == 0 and state["virt"] == "qemu"
    assert state["service"]["UnitFileState"] == "enabled"
    assert state["fabric"]["exit"] == 9 and state["fabric"]["gpus"] == []
    assert "couldn't communicate with the NVIDIA driver" in state["fabric"]["error"]


def test_a_healthy_hgx_host_has_nothing_to_say():
    state = fabricmanager_state(HGX, PINS, 0)
    assert state["problems"] == []
    assert [g["state"] for g in state["fabric"]["gpus"]] == ["Completed", "Completed"]
    assert state["fabric"]["gpus"][0]["address"] == "00000000:18:00.0"


def test_a_newer_fabricmanager_is_the_version_cause_of_error_802():
    text = _with(HGX, packages="nvidia-fabricmanager-535 535.309.01-1 hi\n"
                               "libnvidia-nscq-535 535.261.03-1 hi")
    state = fabricmanager_state(text, PINS, 0)
    assert state["error_802"] == [
        "Error 802 cause: versions differ: nvidia-fabricmanager-535 is 535.309.01 but the "
        "driver is 535.261.03, and fabricmanager refuses a driver of another version. Fix: "
        "install nvidia-fabricmanager-535 at 535.261.03 and hold it (the fabricmanager role "
        "pins it to the driver's version), then systemctl restart nvidia-fabricmanager"]
    assert "not at their pinned versions: nvidia-fabricmanager-535 535.309.01-1 (pinned " \
           "535.261.03-1)" in state["problems"]
    # Without pins (the role installed nothing), the mismatch is still named.
    assert fabricmanager_state(text, {}, 0)["problems"] == state["error_802"]


def test_a_stopped_service_is_a_cause_with_its_journal():
    text = _with(HGX, service="ActiveState=failed\nUnitFileState=enabled\nResult=exit-code",
                 journal="fabric manager NVIDIA GPU driver interface version 535.309.01 don't "
                         "match with driver version 535.261.03.")
    (cause,) = fabricmanager_state(text, PINS, 0)["error_802"]
    assert cause.startswith("Error 802 cause: service down: nvidia-fabricmanager is failed "
                            "(journal: fabric manager NVIDIA GPU driver interface version")
    assert "systemctl start nvidia-fabricmanager" in cause


@pytest.mark.parametrize(("state", "status", "fix"), [
    ("In Progress", "N/A", "still training the NVLinks"),
    ("Not Started", "N/A", "has not registered the GPU"),
    ("Completed", "Failure", "nvidia-smi -r"),
])
def test_a_fabric_not_completed_is_a_cause(state, status, fix):
    text = _with(HGX, fabric=HGX_FABRIC.format(state=state, status=status))
    (cause,) = fabricmanager_state(text, PINS, 0)["error_802"]
    assert cause.startswith(f"Error 802 cause: fabric not completed: GPU 00000000:18:00.0 is "
                            f"{state}/{status}")
    assert fix in cause


def test_gpus_waiting_for_a_fabric_without_nvswitch_in_a_vm():
    text = _with(HGX, nvswitch="", fabric=HGX_FABRIC.format(state="Not Started", status="N/A"))
    causes = fabricmanager_state(text, {}, 0)["error_802"]
    assert causes[0].startswith("Error 802 cause: NVSwitch missing: the GPUs wait for an NVLink "
                                "fabric (state Not Started) but this VM has no NVSwitch device")
    assert "pass the NVSwitches through with the GPUs" in causes[0]
    bare = fabricmanager_state(_with(text, virt="none"), {}, 0)["error_802"][0]
    assert "this host has no NVSwitch device" in bare and "dmesg" in bare


def test_pcie_cards_without_a_fabric_need_nothing():
    text = _with(REAL, packages="", service="LoadState=not-found\nActiveState=inactive",
                 loaded=DRIVER, fabric=HGX_FABRIC.format(state="N/A", status="N/A").replace(
                     "Completed", "N/A").replace("Success", "N/A"))
    state = fabricmanager_state(text, {}, 0)
    assert state["problems"] == [] and len(state["fabric"]["gpus"]) == 2


@pytest.mark.parametrize(("fabric", "mode", "wanted"), [
    (HGX_FABRIC.format(state="Completed", status="Success"), 1, 0),  # full passthrough VM
    ("exit 0", 0, 1),  # a service VM: the NVSwitches and no GPU
])
def test_the_wrong_fabric_mode_in_a_vm_is_a_cause(fabric, mode, wanted):
    text = _with(HGX, virt="kvm", config=f"FABRIC_MODE={mode}", fabric=fabric)
    causes = fabricmanager_state(text, {}, None)["error_802"]
    assert [c for c in causes if c.startswith(
        "Error 802 cause: wrong FABRIC_MODE in a VM: this kvm VM has")] == [causes[-1]]
    assert f"but FABRIC_MODE={mode}. Fix: set FABRIC_MODE={wanted}" in causes[-1]


def test_what_the_role_installed_must_be_held_enabled_and_in_its_mode():
    text = _with(REAL, holds="", service="UnitFileState=disabled", config="FABRIC_MODE=1")
    problems = fabricmanager_state(text, PINS, 0)["problems"]
    assert problems == [
        "not held (apt-mark hold them): libnvidia-nscq-535 nvidia-fabricmanager-535",
        "nvidia-fabricmanager.service is disabled, not enabled: systemctl enable "
        "nvidia-fabricmanager",
        "FABRIC_MODE is 1, not 0 (bare metal / full passthrough)"]
