"""The checkpoint cache's bookkeeping: complete entries only, least recently used evicted first
under the cap, prune empties it. (Taking and resuming real checkpoints is tested on lab hosts in
tests/e2e/test_lab_hosts.py.)"""

from __future__ import annotations

import json
import os
import time

from gpuprov.lab.checkpoints import CheckpointCache

MIB = 2**20


def _entry(root, key, *, mib, used):
    entry = root / key
    entry.mkdir(parents=True)
    (entry / "meta.json").write_text(json.dumps({"kind": "boot", "created": used}))
    (entry / "state.zst").write_bytes(os.urandom(mib * MIB))
    for name in ("disk.qcow2", "OVMF_VARS.fd", "used"):
        (entry / name).write_bytes(b"x")
    os.utime(entry / "used", (used, used))
    return entry


def test_only_complete_entries_count(tmp_path):
    cache = CheckpointCache(tmp_path)
    _entry(tmp_path, "good", mib=1, used=time.time())
    broken = _entry(tmp_path, "broken", mib=1, used=time.time())
    (broken / "state.zst").unlink()  # as a checkpoint interrupted half-way would leave it
    assert [e.key for e in cache.entries()] == ["good"]
    assert cache.get("broken") is None
    assert cache.get("good").size >= MIB


def test_the_least_recently_used_go_first_and_the_newest_always_stays(tmp_path):
    now = time.time()
    cache = CheckpointCache(tmp_path, cap_bytes=int(2.5 * MIB))
    for age, key in ((300, "old"), (200, "middle"), (100, "recent")):
        _entry(tmp_path, key, mib=1, used=now - age)
    newest = _entry(tmp_path, "newest", mib=1, used=now - 400)  # just stored, never used
    cache._evict(keep="newest")
    assert sorted(e.key for e in cache.entries()) == ["newest", "recent"]
    assert newest.exists()


def test_using_an_entry_makes_it_recent(tmp_path):
    now = time.time()
    cache = CheckpointCache(tmp_path, cap_bytes=int(1.5 * MIB))
    _entry(tmp_path, "a", mib=1, used=now - 100)
    _entry(tmp_path, "b", mib=1, used=now - 50)
    (tmp_path / "a" / "used").touch()
    cache._evict(keep="none")
    assert [e.key for e in cache.entries()] == ["a"]


def test_prune_empties_the_cache_and_says_how_much(tmp_path):
    cache = CheckpointCache(tmp_path)
    _entry(tmp_path, "a", mib=1, used=time.time())
    _entry(tmp_path, "b", mib=2, used=time.time())
    (tmp_path / ".c.123.partial").mkdir()
    count, freed = cache.prune()
    assert count == 2 and freed >= 3 * MIB
    assert cache.entries() == [] and not (tmp_path / ".c.123.partial").exists()
