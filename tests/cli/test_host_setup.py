"""`gpuprov host setup`'s flow through the CLI with the host side stubbed: a real lab capture
for the inspection, a canned check-mode result for the preview. What it proves: the plan and
diffs are shown, --check stops there, and without a terminal nothing is applied unless --yes.
The real runs are in tests/e2e/test_host_setup.py."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from gpuprov.cli.app import app
from gpuprov.errors import UsageError
from gpuprov.facts import parse_address
from gpuprov.plan import gpu_verdicts, kernel_params, plan_setup, select_gpus
from gpuprov.stages import host_setup as stage
from gpuprov.stages.inspect import InspectResult
from gpuprov.transport.ansible import Change, PlaybookResult
from tests.unit.probe_facts import load

DIFF = "--- before\n+++ /etc/modprobe.d/gpuprov-vfio.conf\n+ options vfio-pci disable_vga=1\n"


@pytest.fixture
def applied(monkeypatch) -> list[str]:
    """Setup of the second of two identical lab GPUs (not the console: no --yes needed)."""
    facts = load("lab-two-gpus")
    gpus = select_gpus(facts, [parse_address("02:00")])
    verdicts = gpu_verdicts(facts, gpus)
    before = InspectResult("two", "root@127.0.0.1:2222", facts, kernel_params(facts),
                           tuple(verdicts))
    setup = stage.Setup(stage.Target("two", "inventory.yml"), before,
                        plan_setup(facts, verdicts, host="two"))
    calls: list[str] = []
    monkeypatch.setattr(stage.Setup, "prepare", classmethod(lambda cls, host, **_: setup))
    monkeypatch.setattr(stage.Setup, "preview", lambda self: PlaybookResult(
        0, [Change("two", "Configure vfio-pci", [DIFF])], []))
    monkeypatch.setattr(stage.Setup, "apply", lambda self, report: calls.append("apply"))
    return calls


def test_check_shows_plan_and_diff_and_applies_nothing(applied):
    result = CliRunner().invoke(app, ["host", "setup", "two", "--gpu", "02:00", "--check"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for phrase in ("plan for two", "0000:02:00.0", "0000:02:00.1", "vfio-pci",
                   "0000:01:00.0, 0000:01:00.1 carry the same vendor:device ids",
                   "would change:", "Configure vfio-pci", "+ options vfio-pci disable_vga=1",
                   "--check: nothing was changed"):
        assert phrase in result.stdout, phrase
    assert applied == []


def test_without_a_terminal_and_without_yes_nothing_is_applied(applied):
    result = CliRunner().invoke(app, ["host", "setup", "two", "--gpu", "02:00"])
    # CliRunner calls the app, not main(): the error arrives as the exception main() prints.
    assert isinstance(result.exception, UsageError) and result.exception.exit_code == 2
    assert "not confirmed: standard input is not a terminal" in result.exception.message
    assert "will change:" in result.stdout
    assert applied == []


def test_yes_applies_without_a_separate_preview_and_shows_what_changed(monkeypatch, applied):
    def no_preview(self):
        raise AssertionError("--yes with work to do must not walk the host in check mode first")

    monkeypatch.setattr(stage.Setup, "preview", no_preview)
    monkeypatch.setattr(stage.Setup, "apply", lambda self, report: PlaybookResult(
        0, [Change("two", "Configure vfio-pci", [DIFF])], []))
    monkeypatch.setattr(stage.Setup, "verify", lambda self: self.before)
    result = CliRunner().invoke(app, ["host", "setup", "two", "--gpu", "02:00", "--yes"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "changed:" in result.stdout and "+ options vfio-pci disable_vga=1" in result.stdout
    assert "(1 changes, no reboot)" in result.stdout


def test_a_failed_run_that_changed_nothing_says_so(monkeypatch, applied):
    def verification_fails(self, report):
        raise stage.PlaybookFailed("playbooks/host_setup.yml failed on two while applying the "
                                   "changes:\n  two: no IOMMU groups after boot",
                                   "rerun it by hand", PlaybookResult(2, [], ["two: ..."]))

    monkeypatch.setattr(stage.Setup, "apply", verification_fails)
    result = CliRunner().invoke(app, ["host", "setup", "two", "--gpu", "02:00", "--yes"])
    assert result.exception.exit_code == 1
    assert "nothing was changed on two" in result.exception.message
    assert "only the reboot is missing, reboot it" in result.exception.hint
