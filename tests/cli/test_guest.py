"""`gpuprov guest inspect` and `guest setup` through the CLI and the stage engine, with the node
side stubbed by real lab captures (tests/unit/fixtures/guest, read as tests/unit/test_guest_stage
reads them) and the playbook runs by the engine's own result type. What it proves: the report
and its exit code, the plan and its variables per host, --check, bad input before any host is
read. The real runs are molecule/debian-guest-stage's verify (inspect and --check on a real
host, in CI) and the README's "Guest stage" run by hand."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gpuprov import inventory as inventory_
from gpuprov.cli.app import app
from gpuprov.plan import guest as guest_plan
from gpuprov.stages import engine
from gpuprov.stages import guest as guest_stage
from gpuprov.transport.events import Change, HostRun, PlaybookResult
from tests.unit.test_guest_stage import _report

OPEN = guest_plan.GuestRequest(modules="open")


def _invoke(*args: str):
    return CliRunner().invoke(app, ["guest", *args], env={"COLUMNS": "200"})


@pytest.fixture
def one_host(monkeypatch):
    monkeypatch.setattr(inventory_, "hosts_matching", lambda pattern, inventory: ["n1"])


def test_inspect_reports_the_stand_in_the_branch_and_what_is_missing(monkeypatch, one_host):
    asked = []

    def run(host, request, inventory=None, data=None):
        asked.append(request)
        return _report("lab-docker-no-driver")

    monkeypatch.setattr(guest_stage, "run", run)
    result = _invoke("inspect", "n1", "--modules", "open")
    assert result.exit_code == 10, result.output
    for phrase in ("n1: needs setup", "(STAND-IN for 10de:2330) H100 SXM5 80GB",
                   "branch 535, open modules", "missing: install driver branch 535",
                   "docker active, nvidia runtime not wired"):
        assert phrase in result.stdout, phrase
    assert asked == [OPEN]
    result = _invoke("inspect", "n1", "--json")
    document = json.loads(result.stdout)
    assert (document["host"], document["status"], document["exit_code"]) == (
        "n1", "needs setup", 10)
    assert document["match"]["branch"] == 535


def test_inspect_of_a_ready_node_exits_0(monkeypatch, one_host):
    monkeypatch.setattr(guest_stage, "run", lambda *a, **k: _report(
        "lab-guest-stage", guest_plan.GuestRequest(modules="open", default_runtime=True,
                                                   force_fabricmanager=True)))
    result = _invoke("inspect", "n1")
    assert result.exit_code == 0, result.output
    assert "n1: ready" in result.stdout


@pytest.fixture
def setup_runs(monkeypatch, one_host):
    """`guest setup` of a node without the stage; returns the playbook runs made."""
    made = []
    pins = {"nvidia-open-kernel-dkms": "535.261.03-1~deb12u1"}

    def gather(self, host, inventory):
        return _report("lab-docker-no-driver", self.request), guest_plan.DriverPlan(
            "535.261.03", pins)

    def run_playbook(name, **kwargs):
        made.append({"playbook": name, **kwargs})
        return PlaybookResult(0, {"n1": HostRun("n1", changes=[
            Change("n1", "nvidia_driver : Install the driver's packages")])})

    monkeypatch.setattr(guest_stage.GuestSetup, "gather", gather)
    monkeypatch.setattr(engine, "run_playbook", run_playbook)
    return made


def test_setup_check_shows_the_plan_and_passes_it_as_the_roles_variables(setup_runs):
    result = _invoke("setup", "n1", "--modules", "open", "--default-runtime", "--check")
    assert result.exit_code == 0, result.output
    for phrase in ("plan for n1", "driver 535.261.03 (branch 535, open modules)",
                   "module: compiled by DKMS on the host", "fabricmanager: not needed",
                   "container toolkit: wired to docker, containerd as the default runtime",
                   "would change:", "Install the driver's packages",
                   "--check: nothing was changed"):
        assert phrase in result.stdout, phrase
    [run] = setup_runs
    assert (run["playbook"], run["check"]) == ("guest_setup.yml", True)
    variables = run["extravars"]["gpuprov_plans"]["n1"]
    assert variables["nvidia_driver_pins"] == {"nvidia-open-kernel-dkms": "535.261.03-1~deb12u1"}
    assert variables["container_toolkit_runtimes"] == ["docker", "containerd"]
    assert variables["container_toolkit_set_as_default"] is True


def test_setup_passes_vars_files_through(setup_runs, tmp_path):
    extra = tmp_path / "site.yml"
    extra.write_text("container_toolkit_repository_url: file:///srv/mirror/toolkit\n")
    result = _invoke("setup", "n1", "--check", "--vars", str(extra))
    assert result.exit_code == 0, result.output
    assert setup_runs[0]["extravars"]["gpuprov_plans"]["n1"][
        "container_toolkit_repository_url"] == "file:///srv/mirror/toolkit"


@pytest.mark.parametrize(("args", "message"), [
    (("--runtime", "podman"), "'podman' is not a container runtime"),
    (("--modules", "closed"), "open or proprietary"),
])
def test_bad_input_fails_before_any_host_is_read(monkeypatch, args, message):
    monkeypatch.setattr(inventory_, "hosts_matching", pytest.fail)
    for verb in ("inspect", "setup"):
        result = _invoke(verb, "n1", *args, "--check" if verb == "setup" else "--json")
        assert result.exception.exit_code == 2
        assert message in result.exception.message


def test_a_fleet_key_without_prebuilt_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(inventory_, "hosts_matching", pytest.fail)
    for name in ("mok.key", "mok.der"):
        (tmp_path / name).write_text("x")
    result = _invoke("setup", "n1", "--check", "--mok-key", str(tmp_path / "mok.key"),
                     "--mok-cert", str(tmp_path / "mok.der"))
    assert result.exception.exit_code == 2
    assert "add --prebuilt" in result.exception.hint
