"""A stage snapshot's key covers every file and variable that makes the stage's change, so a
snapshot made before any of them changed is never resumed."""

from __future__ import annotations

import shutil
import time

from gpuprov.lab.checkpoints import CheckpointCache
from gpuprov.lab.spec import stage_key
from gpuprov.stages.snapshots import PACKAGE, STAGES, HostSetupSnapshot, digest_sources
from tests.unit.test_checkpoint_cache import _entry


def test_host_setup_inputs_name_its_playbook_roles_and_planner():
    files = STAGES["host-setup"].inputs()["files"]
    for path in ("ansible/playbooks/host_setup.yml", "ansible/roles/iommu/tasks/main.yml",
                 "ansible/roles/vfio/tasks/main.yml", "ansible/roles/vfio/defaults/main.yml",
                 "ansible/roles/host_lock/tasks/main.yml", "ansible/ansible.cfg",
                 "plan/host_setup.py", "facts/probe.sh", "stages/engine.py"):
        assert path in files, path


def _project_copy(tmp_path):
    for part in ("ansible/playbooks/host_setup.yml", "ansible/roles/iommu",
                 "ansible/roles/vfio"):
        source, target = PACKAGE / part, tmp_path / part
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, target)
    return tmp_path


def test_a_changed_or_added_role_file_is_a_new_key_and_the_stale_snapshot_a_miss(tmp_path):
    project = _project_copy(tmp_path / "project")
    stage = HostSetupSnapshot()

    def key():
        inputs = {"files": digest_sources(stage.sources, project), "request": stage.request}
        return stage_key("machine", stage.name, inputs)

    cache = CheckpointCache(tmp_path / "cache")
    stale = key()
    _entry(cache.root, stale, mib=1, used=time.time())
    assert cache.get(key()) is not None  # nothing changed: the snapshot is used

    defaults = project / "ansible/roles/vfio/defaults/main.yml"
    defaults.write_text(defaults.read_text() + "\n# a changed default\n")
    assert key() != stale and cache.get(key()) is None

    edited = key()
    (project / "ansible/roles/iommu/tasks/extra.yml").write_text("---\n[]\n")
    assert key() not in (stale, edited)


def test_a_different_request_is_a_different_snapshot():
    plain = HostSetupSnapshot()
    shared = HostSetupSnapshot(request={**plain.request, "accept_shared_group": True})
    assert stage_key("m", plain.name, plain.inputs()) != \
        stage_key("m", shared.name, shared.inputs())
