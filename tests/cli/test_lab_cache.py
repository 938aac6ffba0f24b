"""`gpuprov lab cache`: list, --json, --prune, run as the installed CLI against a cache
directory of its own (entries made as the checkpoint cache lays them out)."""

from __future__ import annotations

import json
import time

from tests.unit.test_checkpoint_cache import _entry


def test_an_empty_cache_says_so(run_gpuprov, tmp_path):
    result = run_gpuprov("lab", "cache", env={"GPUPROV_CACHE_DIR": str(tmp_path)})
    assert result.stdout == ""
    assert f"no checkpoints in {tmp_path / 'checkpoints'}" in " ".join(result.stderr.split())


def test_lists_then_prunes(run_gpuprov, tmp_path):
    env = {"GPUPROV_CACHE_DIR": str(tmp_path), "COLUMNS": "200"}
    _entry(tmp_path / "checkpoints", "abc123", mib=2, used=time.time() - 7200)
    listed = run_gpuprov("lab", "cache", env=env)
    assert "abc123" in listed.stdout and "2 h ago" in listed.stdout
    assert "1 checkpoint(s), 2 MiB" in listed.stderr
    [entry] = json.loads(run_gpuprov("lab", "cache", "--json", env=env).stdout)
    assert entry["key"] == "abc123" and entry["kind"] == "boot" and entry["bytes"] >= 2 * 2**20
    assert "removed 1 checkpoint(s), 2 MiB freed" in run_gpuprov(
        "lab", "cache", "--prune", env=env).stderr
    assert json.loads(run_gpuprov("lab", "cache", "--json", env=env).stdout) == []
