"""`gpuprov host setup` through the CLI and the stage engine, with the host side stubbed: a real
lab capture for the inspection, and for the playbook runs the job events recorded from real
runs on a lab host (tests/unit/fixtures/events). What it proves: the plan and diffs are shown,
--check stops there, without a terminal nothing is applied unless --yes, and the reboot is
known from the run's results. The real runs are in tests/e2e/test_host_setup.py."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gpuprov import inventory as inventory_
from gpuprov.cli.app import app
from gpuprov.errors import NotConfirmed
from gpuprov.facts import parse_address
from gpuprov.plan import gpu_verdicts, kernel_params, select_gpus
from gpuprov.stages import engine
from gpuprov.stages.host_setup import HostSetup
from gpuprov.stages.inspect import InspectResult
from gpuprov.transport.events import PlaybookResult, decode
from tests.unit.probe_facts import load
from tests.unit.test_events import _recorded


def _as(host: str, name: str) -> list[dict]:
    """A recorded run, as if it had been made on ``host`` (the lab host was called ev)."""
    return json.loads(json.dumps(_recorded(name)).replace('"ev"', json.dumps(host)))


@pytest.fixture
def runs(monkeypatch) -> list[dict]:
    """Setup of the second of two identical lab GPUs (not the console: no --yes needed);
    returns the playbook runs made, each as its keyword arguments."""
    facts = load("lab-two-gpus")
    gpus = select_gpus(facts, [parse_address("02:00")])
    before = InspectResult("two", "root@127.0.0.1:2222", facts, kernel_params(facts),
                           tuple(gpu_verdicts(facts, gpus)))
    made: list[dict] = []

    def run_playbook(name, **kwargs) -> PlaybookResult:
        made.append({"playbook": name, **kwargs})
        return decode(0, _as("two", "host-setup-check" if kwargs["check"]
                             else "host-setup-apply"))

    monkeypatch.setattr(inventory_, "hosts_matching", lambda pattern, inventory: ["two"])
    monkeypatch.setattr(HostSetup, "gather", lambda self, host, inventory: before)
    monkeypatch.setattr(HostSetup, "verify", lambda self, host, inventory, plan: before)
    monkeypatch.setattr(engine, "run_playbook", run_playbook)
    return made


def _invoke(*args: str):
    return CliRunner().invoke(app, ["host", "setup", "two", "--gpu", "02:00", *args],
                              env={"COLUMNS": "200"})


def test_check_shows_plan_and_diff_and_applies_nothing(runs):
    result = _invoke("--check")
    assert result.exit_code == 0, result.output
    for phrase in ("plan for two", "0000:02:00.0", "0000:02:00.1", "vfio-pci",
                   "0000:01:00.0, 0000:01:00.1 carry the same vendor:device ids",
                   "would change:", "Configure vfio-pci", "+ softdep bochs pre: vfio-pci",
                   "--check: nothing was changed"):
        assert phrase in result.stdout, phrase
    assert [r["check"] for r in runs] == [True]
    # The host's own plan travels as its variables, keyed by host.
    assert runs[0]["extravars"]["gpuprov_plans"]["two"]["vfio_pci_addresses"] == [
        "0000:02:00.0", "0000:02:00.1"]
    assert runs[0]["extravars"]["gpuprov_plans"]["two"]["vfio_bind_mode"] == "address"


def test_without_a_terminal_and_without_yes_nothing_is_applied(runs):
    result = _invoke()
    # CliRunner calls the app, not main(): the error arrives as the exception main() prints.
    assert isinstance(result.exception, NotConfirmed) and result.exception.exit_code == 2
    assert "not confirmed: standard input is not a terminal" in result.exception.message
    assert "will change:" in result.stdout
    assert [r["check"] for r in runs] == [True]


def test_yes_applies_without_a_separate_preview_and_counts_the_reboot_from_the_results(runs):
    result = _invoke("--yes")
    assert result.exit_code == 0, result.output
    assert [r["check"] for r in runs] == [False]
    assert "changed:" in result.stdout and "+ softdep bochs pre: vfio-pci" in result.stdout
    assert "ready: two: every function on vfio-pci" in result.stdout
    assert "(9 changes, one reboot)" in result.stdout


def test_json_is_the_outcome_per_host(runs):
    result = _invoke("--yes", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    [host] = document["hosts"]
    assert document["exit_code"] == 0
    assert (host["host"], host["outcome"], host["rebooted"]) == ("two", "done", True)


def test_json_without_yes_or_check_is_refused_before_anything_runs(runs):
    result = _invoke("--json")
    assert isinstance(result.exception, NotConfirmed)
    assert runs == []


def test_a_failed_run_that_changed_nothing_says_so(monkeypatch, runs):
    failing = [e for e in _as("two", "host-setup-check") if e.get("event") == "playbook_on_stats"]
    failing.insert(0, {"event": "runner_on_failed", "event_data": {
        "host": "two", "task": "Check each IOMMU group's vfio device exists",
        "res": {"msg": "no IOMMU groups after boot"}}})
    monkeypatch.setattr(engine, "run_playbook", lambda name, **kw: decode(2, failing))
    result = _invoke("--yes")
    assert result.exit_code == 1
    assert "nothing was changed on two" in result.stderr
    assert "only the reboot is missing, reboot it" in " ".join(result.stderr.split())


@pytest.mark.parametrize(("args", "message"), [
    (("--serial", "0"), "--serial '0' is not a batch size"),
    (("--serial", "150%"), "--serial '150%' is not a batch size"),
    (("--max-fail", "101"), "--max-fail 101 is not a percentage"),
])
def test_bad_batch_options_are_refused_before_anything_is_read(runs, args, message):
    result = _invoke("--yes", *args)
    assert result.exception.exit_code == 2 and message in result.exception.message
    assert runs == []
