"""Run Ansible's proxmox_kvm module against a PveSimulator in a real `ansible-playbook`.

The module (community.general.proxmox_kvm, which Ansible 12 redirects to
community.proxmox.proxmox_kvm) talks proxmoxer over HTTPS, verifying the simulator's certificate
through REQUESTS_CA_BUNDLE. Used by tests/pvesim/test_proxmox_kvm.py and bench/proxmox.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.pvesim.server import PveSimulator

ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def run_playbook(sim: PveSimulator, workdir: Path, credentials: dict[str, Any],
                 tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the tasks (each a proxmox_kvm argument dict) against the simulator; return each
    task's result as Ansible reports it."""
    # proxmox_kvm polls task status once a second; finished-at-once tasks save it a round.
    sim.task_delay = 0
    connection = {"api_host": sim.host, "api_port": sim.port, "validate_certs": True,
                  "node": sim.node, **credentials}
    play = [{
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "tasks": [{"name": f"task {index}",
                   "community.general.proxmox_kvm": {**connection, **arguments},
                   "ignore_errors": True}
                  for index, arguments in enumerate(tasks)],
    }]
    playbook = workdir / "play.yml"
    playbook.write_text(yaml.safe_dump(play, sort_keys=False))
    env = {
        **os.environ,
        "REQUESTS_CA_BUNDLE": str(sim.cert_path),  # what validate_certs=true verifies against
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_HOME": str(workdir / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp"),
        "ANSIBLE_DEPRECATION_WARNINGS": "false",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
    }
    # cwd is the scratch directory, so the project's own ansible.cfg is not picked up.
    completed = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", str(playbook),
         "-e", f"ansible_python_interpreter={sys.executable}"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300, check=False)
    try:
        report = json.loads(completed.stdout)
    except ValueError:
        raise AssertionError(f"ansible-playbook said:\n{completed.stdout}\n"
                             f"{completed.stderr}") from None
    return [task["hosts"]["localhost"] for task in report["plays"][0]["tasks"]]
