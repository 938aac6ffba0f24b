"""`transport.ansible.run_playbook` with real ansible-core (through ansible-runner) against
localhost over the local connection: changes and their diffs, check mode, failures, progress."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from gpuprov.transport.ansible import RunInterrupted, run_playbook
from tests.conftest import qemu_pids_under

PLAYBOOK = """\
- name: Write one file, fail on request
  hosts: all
  gather_facts: false
  tasks:
    - name: Write the greeting
      ansible.builtin.copy:
        content: "hello {{ who }}\\n"
        dest: "{{ target }}"
        mode: "0644"
    - name: Fail when asked to
      ansible.builtin.fail:
        msg: "asked to fail for {{ who }}"
      when: fail | default(false)
"""


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Path]:
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    here:\n      ansible_connection: local\n"
                         "      ansible_python_interpreter: '{{ ansible_playbook_python }}'\n")
    return playbook, inventory


def test_check_mode_reports_the_diff_and_changes_nothing(project, tmp_path):
    playbook, inventory = project
    target = tmp_path / "greeting"
    started = []
    result = run_playbook(playbook, inventory=inventory, limit="here", check=True,
                          extravars={"who": "lab", "target": str(target)},
                          report=lambda host, task: started.append((host, task)))
    assert result.ok
    [change] = result.changes
    assert (change.host, change.task) == ("here", "Write the greeting")
    assert "+ hello lab" in "".join(change.diffs)
    assert not target.exists()
    assert ("here", "Write the greeting") in started


def test_a_real_run_changes_once_then_nothing(project, tmp_path):
    playbook, inventory = project
    target = tmp_path / "greeting"
    variables = {"who": "lab", "target": str(target)}
    first = run_playbook(playbook, inventory=inventory, limit="here", extravars=variables)
    assert first.ok and [c.task for c in first.changes] == ["Write the greeting"]
    assert target.read_text() == "hello lab\n"
    second = run_playbook(playbook, inventory=inventory, limit="here", extravars=variables)
    assert second.ok and second.changes == []


def test_a_failing_task_is_reported_with_its_message(project, tmp_path):
    playbook, inventory = project
    result = run_playbook(playbook, inventory=inventory, limit="here",
                          extravars={"who": "x", "target": str(tmp_path / "g"), "fail": True})
    assert not result.ok and result.rc != 0
    assert result.failures == ["here: Fail when asked to: asked to fail for x"]


def test_a_relative_inventory_path_reaches_its_hosts(project, tmp_path, monkeypatch):
    # ansible-playbook runs in the project directory; a path relative to the user's directory
    # used to match no host there, and the run "succeeded" having done nothing.
    playbook, inventory = project
    target = tmp_path / "greeting"
    monkeypatch.chdir(tmp_path)
    result = run_playbook(playbook, inventory=Path(inventory.name), limit="here",
                          extravars={"who": "lab", "target": str(target)})
    assert result.ok and [c.task for c in result.changes] == ["Write the greeting"]
    assert target.read_text() == "hello lab\n"


SLOW_PLAYBOOK = """\
- name: Write one file, then take long
  hosts: all
  gather_facts: false
  tasks:
    - name: Write the greeting
      ansible.builtin.copy:
        content: "hello\\n"
        dest: "{{ target }}"
        mode: "0644"
    - name: Take long
      ansible.builtin.command: sleep 60
      changed_when: true
    - name: Write after
      ansible.builtin.copy:
        content: "after\\n"
        dest: "{{ target }}.after"
        mode: "0644"
"""


def test_ctrl_c_cancels_the_run_and_says_what_each_host_had_done(project, tmp_path):
    _, inventory = project
    playbook = tmp_path / "slow.yml"
    playbook.write_text(SLOW_PLAYBOOK)
    target = tmp_path / "greeting"

    def interrupt_at_the_long_task(host, task):
        if task == "Take long":
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends

    with pytest.raises(RunInterrupted) as interrupted:
        run_playbook(playbook, inventory=inventory, limit="here",
                     extravars={"target": str(target)}, report=interrupt_at_the_long_task)
    run = interrupted.value.result.host("here")
    assert [c.task for c in run.changes] == ["Write the greeting"]
    assert run.last_task == "Take long"
    assert target.exists() and not Path(f"{target}.after").exists()
    # Nothing of the run is left: Ansible's worker for the running task has a session of its
    # own (setsid), and once outlived ansible-runner's SIGKILL of the playbook's group.
    deadline = time.monotonic() + 15
    while (left := qemu_pids_under(tmp_path, b"ansible-playbook")) and \
            time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, left
