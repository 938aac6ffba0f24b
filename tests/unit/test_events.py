"""`transport.events.decode` on job events recorded from real runs of the project's playbooks
on a lab host (tests/unit/fixtures/events/record.py made them; its docstring says how)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuprov.transport.events import CHANGED, OK, UNREACHABLE, decode

FIXTURES = Path(__file__).parent / "fixtures" / "events"


def _recorded(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines()]


def test_a_real_setup_run_reports_its_changes_diffs_and_one_reboot():
    result = decode(0, _recorded("host-setup-apply"))
    assert result.ok and list(result.hosts) == ["ev"]
    run = result.host("ev")
    assert run.outcome == CHANGED and run.rebooted
    tasks = [c.task for c in run.changes]
    assert "Write the calling role's rollback record" in tasks
    assert tasks[-1] == "Reboot once into the new command line and driver binding"
    assert tasks.count("Rebuild the initramfs") == 1
    conf = next(c for c in run.changes if c.task.startswith("Configure vfio-pci"))
    assert any("+ options vfio-pci ids=1234:1111,8086:293e disable_vga=1" in d
               for d in conf.diffs)


def test_the_check_mode_preview_says_it_would_reboot_and_changes_nothing_real():
    run = decode(0, _recorded("host-setup-check")).host("ev")
    # The reboot module answers for check mode: it would reboot.
    assert run.rebooted and run.outcome == CHANGED
    assert "Rebuild the initramfs" not in [c.task for c in run.changes]  # handlers: not run


def test_a_reboot_is_read_from_the_module_result_not_from_the_task_name():
    events = _recorded("host-rollback-apply")
    for event in events:  # a task renamed by a user still counts
        data = event.get("event_data", {})
        if data.get("task", "").startswith("Reboot"):
            data["task"] = "Bounce"
    assert decode(0, events).host("ev").rebooted
    events = [e for e in events if not e.get("event_data", {}).get("res", {}).get("rebooted")]
    assert not decode(0, events).host("ev").rebooted


def test_rollback_with_nothing_recorded_is_ok_without_changes():
    run = decode(0, _recorded("host-rollback-check-nothing")).host("ev")
    assert run.outcome == OK and not run.changes and not run.rebooted


def test_an_unreachable_host_is_its_own_outcome():
    result = decode(4, _recorded("host-rollback-unreachable"))
    run = result.host("gone")
    assert run.outcome == UNREACHABLE and not run.failures
    assert "Connection refused" in run.unreachable
    assert not result.ok
    assert result.failures == [f"gone: unreachable: {run.unreachable}"]


def test_hosts_the_play_matched_but_no_task_reached_are_listed():
    events = [{"event": "playbook_on_stats",
               "event_data": {"ok": {"a": 3}, "changed": {"a": 1}, "skipped": {"b": 0}}}]
    result = decode(0, events)
    assert set(result.hosts) == {"a", "b"}
    assert result.host("b").last_task is None


@pytest.mark.parametrize("rc", [2, 4])
def test_a_failure_without_any_event_keeps_the_last_lines(rc):
    events = [{"event": "verbose", "stdout": "ERROR! the playbook could not be found"}]
    result = decode(rc, events)
    assert result.failures == ["ERROR! the playbook could not be found"]
