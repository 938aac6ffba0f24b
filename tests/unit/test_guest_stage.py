"""The guest stage's pure part (gpuprov/facts/guest.py, gpuprov/plan/guest.py): what the guest
probe says, which driver the cards need, how a node stands, and the plan's variables.

fixtures/guest/NAME/ holds the four scripts' real output on a lab host (the guest probe, then
the nvidia_driver, fabricmanager and container_toolkit roles' state scripts), captured over the
same SSH session `gpuprov guest inspect` uses:
- lab-docker-no-driver: a stock bookworm lab host with Debian's docker.io (and containerd)
  installed, no driver;
- lab-guest-stage: the same host after playbooks/guest_setup.yml (molecule/debian-guest-stage):
  Debian's 535 driver with open modules and a prebuilt module, fabricmanager forced, the
  STAND-IN toolkit wired to docker and containerd as their default.
The lab's card is QEMU's 1234:1111; the inventory names the card it stands in for (10de:2330,
an H100). Other cases change a section of a real capture.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuprov.errors import (
    EXIT_NEEDS_SETUP,
    EXIT_OK,
    EXIT_REFUSED,
    NotFoundError,
    Refused,
    UsageError,
)
from gpuprov.facts.guest import GuestCard, parse_guest_facts
from gpuprov.plan import guest
from gpuprov.plan.driver import DriverData
from gpuprov.stages.guest import read_vars

FIXTURES = Path(__file__).parent / "fixtures" / "guest"
H100 = "10de:2330"
DATA = DriverData.load()


def _texts(name: str) -> dict[str, str]:
    return {part: (FIXTURES / name / f"{part}.txt").read_text()
            for part in ("probe", "driver", "fabricmanager", "toolkit")}


OPEN = guest.GuestRequest(modules="open")


def _report(name: str, request: guest.GuestRequest = OPEN, *, stand_in: str | None = H100,
            **replace: str) -> guest.GuestReport:
    texts = {**_texts(name), **replace}
    facts = parse_guest_facts(texts["probe"])
    cards = guest.matched_cards(facts, stand_in)
    match = guest.match_driver(DATA, facts, cards, request)
    states = guest.read_states(facts, match, texts["driver"], texts["fabricmanager"],
                               texts["toolkit"], request)
    return guest.judge(facts, cards, match, states, request)


def test_the_probe_reads_the_distro_kernel_and_cards():
    facts = parse_guest_facts(_texts("lab-docker-no-driver")["probe"])
    assert (facts.distro, facts.codename, facts.kernel) == ("debian12", "bookworm",
                                                            "6.1.0-50-amd64")
    assert facts.cards == (GuestCard("0000:01:00.0", "1234:1111", "030000", "bochs-drm"),)
    assert facts.packages == {} and facts.driver_version is None and facts.run_installer is None


def test_the_probe_reads_the_installed_driver_from_its_module_package():
    facts = parse_guest_facts(_texts("lab-guest-stage")["probe"])
    assert facts.packages["nvidia-open-kernel-dkms"].startswith("535.")
    assert facts.driver_version == facts.packages["nvidia-open-kernel-dkms"].split("-")[0]


@pytest.mark.parametrize(("os_release", "distro"), [
    ("ID=debian\nVERSION_ID=\"13\"", "debian13"),
    ("ID=ubuntu\nVERSION_ID=\"24.04\"", "ubuntu24.04"),
    ("ID=rocky\nVERSION_ID=\"9.4\"", "rhel9"),
])
def test_the_distro_key_follows_os_release(os_release, distro):
    assert parse_guest_facts(f"### os_release\n{os_release}\n").distro == distro


def test_the_lab_card_is_matched_as_the_card_it_stands_in_for():
    facts = parse_guest_facts(_texts("lab-docker-no-driver")["probe"])
    [card] = guest.matched_cards(facts, H100)
    assert card.stand_in and card.matched_as == H100
    assert "STAND-IN for 10de:2330" in card.describe()
    # Without the lab variable the node has no NVIDIA GPU, which is exit 3.
    assert guest.matched_cards(facts, None) == []
    with pytest.raises(NotFoundError, match="no NVIDIA GPU on this host"):
        guest.match_driver(DATA, facts, [], guest.GuestRequest())


def test_a_real_nvidia_card_wins_over_the_stand_in():
    probe = _texts("lab-docker-no-driver")["probe"].replace(
        "0000:01:00.0 1234:1111 030000 bochs-drm",
        "0000:01:00.0 1234:1111 030000 bochs-drm\n0000:02:00.0 10de:1db6 030200 nvidia")
    facts = parse_guest_facts(probe)
    assert [c.matched_as for c in guest.matched_cards(facts, H100)] == ["10de:1db6"]


def test_cards_that_need_different_drivers_are_refused():
    probe = _texts("lab-docker-no-driver")["probe"].replace(
        "0000:01:00.0 1234:1111 030000 bochs-drm",
        "0000:01:00.0 10de:2330 030200 nvidia\n0000:02:00.0 10de:1db6 030200 nvidia")
    facts = parse_guest_facts(probe)
    # An H100 needs the open modules (asked here); a V100 (Volta, no GSP) cannot have them.
    with pytest.raises(UsageError, match="cannot use the open kernel modules"):
        guest.match_driver(DATA, facts, guest.matched_cards(facts, None),
                           guest.GuestRequest(modules="open"))
    # Without --modules, each card's own default: one branch, one module flavour, one driver.
    match = guest.match_driver(DATA, facts, guest.matched_cards(facts, None),
                               guest.GuestRequest())
    assert match.branch == 535
    mixed = probe.replace("10de:1db6", "10de:1287")  # a Kepler GK208: legacy 470 only
    facts = parse_guest_facts(mixed)
    with pytest.raises(Refused, match="need different drivers") as refused:
        guest.match_driver(DATA, facts, guest.matched_cards(facts, None), guest.GuestRequest())
    assert "branch 470" in refused.value.message and "branch 535" in refused.value.message


def test_a_node_without_the_stage_needs_setup_and_says_what():
    report = _report("lab-docker-no-driver")
    assert (report.status, report.exit_code) == (guest.NEEDS_SETUP, EXIT_NEEDS_SETUP)
    assert report.match.branch == 535 and report.match.modules == "open"
    assert report.missing[0] == ("install driver branch 535 (open modules): "
                                 "nvidia-open-kernel-dkms nvidia-smi libcuda1 nvidia-persistenced")
    text = "\n".join(report.missing)
    assert "not installed: nvidia-container-toolkit" in text
    assert "docker info does not list the nvidia runtime" in text
    assert "containerd's configuration has no nvidia runtime" in text
    assert "no NVSwitch: fabricmanager is not needed" in report.notes
    assert report.states.toolkit["wanted"] == ["docker", "containerd"]


def test_the_node_after_the_guest_stage_is_ready():
    report = _report("lab-guest-stage", guest.GuestRequest(modules="open", default_runtime=True,
                                                           force_fabricmanager=True))
    assert report.missing == () and report.refusals == ()
    assert (report.status, report.exit_code) == (guest.READY, EXIT_OK)
    assert report.states.driver["module"] == "installed"
    assert set(report.states.fabricmanager["installed"]) == {"nvidia-fabricmanager-535",
                                                             "libnvidia-nscq-535"}
    assert report.to_json()["cards"][0]["stand_in"] is True


def test_an_unheld_driver_package_needs_setup():
    texts = _texts("lab-guest-stage")
    holds = texts["driver"].split("== holds\n", 1)[1].split("== ", 1)[0]
    report = _report("lab-guest-stage", driver=texts["driver"].replace(
        holds, holds.replace("libcuda1\n", "")))
    assert report.status == guest.NEEDS_SETUP
    assert any(m.startswith("not held (apt-mark hold them): libcuda1") for m in report.missing)


def test_secure_boot_with_the_signing_key_not_enrolled_needs_setup_and_says_how():
    """The driver role's reader decides (test_role_nvidia_driver_state has its cases); guest
    inspect reports what it says, in its JSON too."""
    driver = _texts("lab-guest-stage")["driver"].replace(
        "== secure-boot\n0\n", "== secure-boot\n1\n").replace(
        "== signer\n", "== signer\nDKMS module signing key\n== sig-key\n65:FB:AA:58\n"
        "== mok-enrolled\nnone\n== mok-pending\nnone\n")
    report = _report("lab-guest-stage", guest.GuestRequest(
        modules="open", default_runtime=True, force_fabricmanager=True), driver=driver)
    assert report.status == guest.NEEDS_SETUP
    [missing] = report.missing
    assert "(DKMS module signing key, serial 65:FB:AA:58) is not enrolled" in missing
    assert "mokutil --import CERT" in missing
    assert report.to_json()["driver"]["mok"] == "not enrolled"
    unknown = _report("lab-guest-stage", guest.GuestRequest(
        modules="open", default_runtime=True, force_fabricmanager=True),
        driver=driver.replace("== mok-enrolled\nnone\n", "== mok-enrolled\n"))
    assert unknown.status == guest.READY and unknown.states.driver["mok"] == "unknown"
    assert any("whether its key is enrolled is unknown" in n for n in unknown.notes)


def test_another_branch_installed_needs_setup():
    probe = _texts("lab-guest-stage")["probe"]
    report = _report("lab-guest-stage", probe=probe.replace(
        "nvidia-open-kernel-dkms 535.", "nvidia-open-kernel-dkms 470."))
    assert any("the card needs branch 535" in m for m in report.missing)


def test_a_run_installer_driver_is_unsafe_to_set_up():
    probe = _texts("lab-docker-no-driver")["probe"] + "/usr/bin/nvidia-uninstall\n"
    report = _report("lab-docker-no-driver", probe=probe)
    assert (report.status, report.exit_code) == (guest.UNSAFE, EXIT_REFUSED)
    assert "run nvidia-uninstall, reboot" in report.refusals[0]
    with pytest.raises(Refused, match=r"NVIDIA's \.run installer"):
        guest.plan_guest_setup("n1", report, guest.DriverPlan("535.261.03", {}),
                               guest.GuestRequest())


def test_ubuntu_is_matched_but_not_installed():
    probe = _texts("lab-docker-no-driver")["probe"].replace(
        "ID=debian", "ID=ubuntu").replace('VERSION_ID="12"', 'VERSION_ID="24.04"')
    report = _report("lab-docker-no-driver", probe=probe)
    assert report.status == guest.UNSAFE
    assert "nvidia-headless-" in report.refusals[0]


def test_without_a_runtime_the_toolkit_is_left_out():
    texts = _texts("lab-docker-no-driver")
    toolkit = "== runtimes\n== docker\n== containerd\n== crio\n== packages\n== holds\n== gpus\n"
    report = _report("lab-docker-no-driver", toolkit=toolkit)
    assert report.states.toolkit is None
    assert any("the toolkit is left out" in n for n in report.notes)
    plan = guest.plan_guest_setup("n1", report, guest.DriverPlan("535.261.03", {"a": "1"}),
                                  guest.GuestRequest())
    assert plan.host_vars()["gpuprov_container_toolkit"] is False
    assert "left out" in plan.reasons()[-1]
    assert texts["toolkit"] != toolkit


def test_a_runtime_asked_for_but_not_installed_is_refused():
    request = guest.GuestRequest(modules="open", runtimes=("crio",))
    report = _report("lab-docker-no-driver", request)
    with pytest.raises(Refused, match="has no crio installed") as refused:
        guest.plan_guest_setup("n1", report, guest.DriverPlan("535.261.03", {}), request)
    assert "docker, containerd is" in refused.value.message


def test_the_plan_is_the_roles_variables():
    request = guest.GuestRequest(modules="open", default_runtime=True)
    report = _report("lab-docker-no-driver", request)
    pins = {"nvidia-open-kernel-dkms": "535.261.03-1~deb12u1"}
    plan = guest.plan_guest_setup("n1", report, guest.DriverPlan("535.261.03", pins, "/c/m.tgz"),
                                  request, {"container_toolkit_version": "1.17.7"})
    variables = plan.host_vars()
    assert set(variables) == guest.PLANNED_VARIABLES | {"container_toolkit_version"}
    assert variables["nvidia_driver_packages"] == ["nvidia-open-kernel-dkms", "nvidia-smi",
                                                   "libcuda1", "nvidia-persistenced"]
    assert variables["nvidia_driver_pins"] == pins
    assert variables["nvidia_driver_prebuilt_module"] == "/c/m.tgz"
    assert variables["container_toolkit_runtimes"] == ["docker", "containerd"]
    assert variables["container_toolkit_set_as_default"] is True
    assert variables["fabricmanager_force"] is False
    assert "prebuilt on this machine, /c/m.tgz" in "\n".join(plan.reasons())


def test_an_archive_of_another_branch_is_refused():
    report = _report("lab-docker-no-driver")
    with pytest.raises(Refused, match="not branch 535"):
        guest.plan_guest_setup("n1", report, guest.DriverPlan("550.163.01", {}),
                               guest.GuestRequest())


def test_bad_requests_fail_before_any_host_is_read():
    with pytest.raises(UsageError, match="'podman' is not a container runtime"):
        guest.GuestRequest(runtimes=("podman",)).check()
    with pytest.raises(UsageError, match="open or proprietary"):
        guest.GuestRequest(modules="closed").check()


def test_vars_files_are_checked(tmp_path):
    good = tmp_path / "good.yml"
    good.write_text("container_toolkit_version: 1.17.7\n")
    assert read_vars(good) == {"container_toolkit_version": "1.17.7"}
    planned = tmp_path / "planned.yml"
    planned.write_text("nvidia_driver_version: 550.1\n")
    with pytest.raises(UsageError, match="which guest setup plans itself"):
        read_vars(planned)
    listed = tmp_path / "list.yml"
    listed.write_text("- a\n")
    with pytest.raises(UsageError, match="must be a mapping"):
        read_vars(listed)
    with pytest.raises(UsageError, match="cannot read --vars"):
        read_vars(tmp_path / "missing.yml")


def test_a_fleet_reads_the_archive_once_per_distro_and_builds_once(monkeypatch):
    from gpuprov import drivers
    from gpuprov.plan.apt_pins import PinPlan
    from gpuprov.plan.driver_build import ModuleBuild
    from gpuprov.stages import guest as stage

    reads, builds = [], []
    pins = PinPlan("535.261.03", {"nvidia-open-kernel-dkms": "535.261.03-1~deb12u1"})

    def plan_from_archive(sources, packages, *, kernel=None, codename="", mok=None):
        reads.append((tuple(sources), kernel))
        return pins, ModuleBuild(codename, kernel, "nvidia-open-kernel-dkms",
                                 "535.261.03-1~deb12u1", pins, None)

    class Builder:
        def __init__(self, cache, mirror, report):
            pass

        def build(self, build, sources, mok):
            builds.append(build.kernel)
            return drivers.BuiltModule(Path("/cache/m.dkms.tar.gz"), "nvidia-current-open",
                                       [], False, False)

    monkeypatch.setattr(drivers, "plan_from_archive", plan_from_archive)
    monkeypatch.setattr(drivers, "ModuleBuilder", Builder)
    monkeypatch.setattr(stage, "run", lambda host, request, inventory=None, data=None:
                        _report("lab-docker-no-driver"))
    setup = stage.GuestSetup(OPEN, stage.DriverSource(prebuilt=True))
    plans = [setup.plan(host, setup.gather(host, Path("inventory"))) for host in ("n1", "n2")]
    assert len(reads) == 1 and builds == ["6.1.0-50-amd64"]
    assert reads[0][0][0].startswith("deb http://deb.debian.org/debian bookworm main")
    for plan in plans:
        assert plan.host_vars()["nvidia_driver_prebuilt_module"] == "/cache/m.dkms.tar.gz"
        assert plan.host_vars()["nvidia_driver_version"] == "535.261.03"
