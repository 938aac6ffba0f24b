"""`gpuprov playbooks`: where the packaged playbooks are, for plain ansible-playbook users. The
installed-wheel run is tests/e2e/test_fleet.py."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

import gpuprov
from gpuprov.cli.app import app


def test_prints_the_packaged_playbooks_and_how_to_run_them():
    result = CliRunner().invoke(app, ["playbooks"])
    assert result.exit_code == 0, result.output
    directory = Path(result.stdout.strip())
    assert directory == Path(gpuprov.__file__).resolve().parent / "ansible" / "playbooks"
    assert (directory / "host_setup.yml").is_file()
    assert (directory.parent / "roles" / "host_lock" / "tasks" / "main.yml").is_file()
    hint = " ".join(result.stderr.split())
    assert f"ANSIBLE_CONFIG={directory.parent / 'ansible.cfg'} " in hint
    # With mitogen's strategy, from the plugin directory that ships beside the playbooks.
    plugins = directory.parent / "strategy_plugins"
    assert f"ANSIBLE_STRATEGY_PLUGINS={plugins} ANSIBLE_STRATEGY=mitogen_linear ansible-playbook" \
        in hint
    assert (plugins / "mitogen_linear.py").is_file()
