"""The stage engine over several hosts, with a stage of the test's own and the playbook runs
answered from events shaped like ansible-runner's: who is previewed, who is applied, in which
batches, who is refused, and the exit code of the whole run."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import pytest

from gpuprov import inventory as inventory_
from gpuprov.errors import HostUnreachable, Refused, worst
from gpuprov.stages import engine
from gpuprov.transport.events import decode


@pytest.mark.parametrize(("serial", "max_fail", "runs", "stopped"), [
    (None, None, ["a", "c", "d"], []),  # refused hosts never stop the others by default
    ("1", None, ["a", "c", "d"], []),
    ("1", 0, ["a"], ["c", "d"]),  # a's batch, then b's: refused, so the run stops there
    ("2", 0, ["a"], ["c", "d"]),  # [a, b] is the last batch; b never reaches Ansible
    ("2", 50, ["a", "c", "d"], []),  # one of two is 50%, not more than 50%
    ("3", 33, ["a", "c"], ["d"]),
    ("50%", 0, ["a"], ["c", "d"]),
])
def test_refused_hosts_count_against_max_fail_in_ansibles_batches(serial, max_fail, runs,
                                                                   stopped):
    assert engine.hosts_before_stop(["a", "b", "c", "d"], {"a", "c", "d"}, {"b"}, serial,
                                    max_fail) == (runs, stopped)


@pytest.mark.parametrize(("serial", "hosts", "size"), [
    (None, 5, 5), ("2", 5, 2), ("25%", 8, 2), ("25%", 3, 1), ("100%", 3, 3)])
def test_batch_size_is_ansibles(serial, hosts, size):
    assert engine.batch_size(serial, hosts) == size


def test_the_worst_host_decides_the_exit_code():
    assert worst([0, 10, 3]) == 3
    assert worst([0, 20, 3]) == 20
    assert worst([20, 4]) == 4
    assert worst([4, 1, 0]) == 1
    assert worst([]) == 0


class Stage:
    """A stage whose plan refuses the hosts named in ``refuse`` and whose gather fails on
    those named in ``down``."""

    playbook = "test.yml"

    def __init__(self, refuse=(), down=()):
        self.refuse, self.down, self.verified = set(refuse), set(down), []

    def gather(self, host, inventory):
        if host in self.down:
            raise HostUnreachable(f"cannot reach {host} over SSH")
        return {"host": host}

    def plan(self, host, gathered):
        if host in self.refuse:
            raise Refused(f"{host} is unsafe")
        return {"value": host}

    def host_vars(self, plan):
        return plan

    def has_work(self, plan):
        return True

    def unchanged(self, host, plan):
        return f"{host} is fine"

    def failed_unchanged_hint(self, host):
        return None

    def verify(self, host, inventory, plan):
        self.verified.append(host)
        return host


class Ui:
    def __init__(self):
        self.confirmed = []

    def planned(self, outcomes):
        pass

    def changes(self, result, heading):
        pass

    def confirm(self, hosts):
        self.confirmed.append(list(hosts))

    def progress(self):
        return nullcontext(lambda host, task: None)


def _events(changed=(), failed=(), unreachable=(), untouched=()):
    events = []
    for host in changed:
        events += [{"event": "runner_on_start", "event_data": {"host": host, "task": "t"}},
                   {"event": "runner_on_ok", "event_data": {
                       "host": host, "task": "t", "res": {"changed": True}}},
                   {"event": "runner_on_ok", "event_data": {
                       "host": host, "task": "r", "res": {"changed": True, "rebooted": True}}}]
    for host in failed:
        events += [{"event": "runner_on_start", "event_data": {"host": host, "task": "t"}},
                   {"event": "runner_on_failed", "event_data": {
                       "host": host, "task": "t", "res": {"msg": "broke"}}}]
    for host in unreachable:
        events.append({"event": "runner_on_unreachable", "event_data": {
            "host": host, "task": "t", "res": {"msg": "Data could not be sent"}}})
    events.append({"event": "playbook_on_stats", "event_data": {
        "ok": dict.fromkeys(changed, 1), "processed": dict.fromkeys(untouched, 1)}})
    return events


@pytest.fixture
def fleet(monkeypatch):
    monkeypatch.setattr(inventory_, "hosts_matching",
                        lambda pattern, inventory: ["a", "b", "c", "d"])
    runs = []

    def playbook(answer):
        def run_playbook(name, **kwargs):
            runs.append(kwargs)
            return answer(kwargs)
        monkeypatch.setattr(engine, "run_playbook", run_playbook)

    playbook.runs = runs
    return playbook


def _run(stage, **request):
    return engine.run(stage, "all", Path("inventory.yml"), engine.Request(**request), Ui())


def test_a_refused_and_a_down_host_leave_the_others_to_go_on(fleet):
    fleet(lambda kw: decode(0, _events(changed=kw["limit"].split(","))))
    stage = Stage(refuse={"b"}, down={"d"})
    run = _run(stage, yes=True, serial="1")
    assert [(o.host, o.status, o.exit_code) for o in run.outcomes] == [
        ("a", "done", 0), ("b", "refused", 20), ("c", "done", 0), ("d", "unreachable", 4)]
    assert run.exit_code == 4
    [applied] = fleet.runs
    assert applied["limit"] == "a,c" and not applied["check"]
    assert applied["extravars"]["gpuprov_serial"] == "1"
    assert applied["extravars"]["gpuprov_plans"] == {"a": {"value": "a"}, "c": {"value": "c"}}
    assert stage.verified == ["a", "c"]
    assert all(o.rebooted for o in run.outcomes if o.status == "done")


def test_max_fail_zero_stops_at_the_refused_host(fleet):
    fleet(lambda kw: decode(0, _events(changed=kw["limit"].split(","))))
    run = _run(Stage(refuse={"b"}), yes=True, serial="1", max_fail=0)
    assert [(o.host, o.status) for o in run.outcomes] == [
        ("a", "done"), ("b", "refused"), ("c", "not run"), ("d", "not run")]
    assert fleet.runs[0]["limit"] == "a"
    assert fleet.runs[0]["extravars"]["gpuprov_max_fail_percentage"] == 0
    assert run.exit_code == 1


def test_hosts_ansible_stopped_before_are_not_run_and_failures_are_reported(fleet):
    fleet(lambda kw: decode(2, _events(changed=["a"], failed=["b"], untouched=["c", "d"])))
    run = _run(Stage(), yes=True, serial="1")
    assert [(o.host, o.status, o.exit_code) for o in run.outcomes] == [
        ("a", "done", 0), ("b", "failed", 1), ("c", "not run", 1), ("d", "not run", 1)]
    assert "broke" in run.outcomes[1].message
    assert "nothing was changed on b" in run.outcomes[1].message


def test_power_cut_mid_run_is_unreachable_not_failed(fleet):
    fleet(lambda kw: decode(4, _events(changed=["a", "b", "c"], unreachable=["d"])))
    run = _run(Stage(), yes=True)
    d = run.outcomes[3]
    assert (d.status, d.exit_code) == ("unreachable", 4)
    assert "lost contact with d while applying" in d.message
    assert "gpuprov host inspect d" in d.hint


def test_without_yes_one_preview_then_one_confirmation_for_the_hosts_with_changes(fleet):
    def answer(kw):
        if kw["check"]:
            return decode(0, _events(changed=["a", "c"], untouched=["b", "d"]))
        return decode(0, _events(changed=kw["limit"].split(",")))

    fleet(answer)
    ui = Ui()
    stage = Stage()
    stage.has_work = lambda plan: None
    run = engine.run(stage, "all", Path("i"), engine.Request(), ui)
    assert [r["check"] for r in fleet.runs] == [True, False]
    assert fleet.runs[0]["limit"] == "a,b,c,d" and fleet.runs[1]["limit"] == "a,c"
    assert ui.confirmed == [["a", "c"]]
    assert [o.status for o in run.outcomes] == ["done", "nothing to do", "done", "nothing to do"]


def test_check_previews_every_host_and_applies_none(fleet):
    fleet(lambda kw: decode(0, _events(changed=["a", "b"], untouched=["c", "d"])))
    run = _run(Stage(refuse={"d"}), check=True)
    assert [r["check"] for r in fleet.runs] == [True]
    assert [o.status for o in run.outcomes] == [
        "would change", "would change", "nothing to do", "refused"]
    assert run.exit_code == 20
