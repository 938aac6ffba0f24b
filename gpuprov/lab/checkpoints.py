"""Checkpoints of running lab hosts, so that a later ``lab up`` resumes one instead of booting.

A checkpoint is everything QEMU needs to carry on exactly where a host was: its RAM and device
state (QEMU's own migration stream, written to a file through zstd), its disk overlay and its
UEFI variables, taken at the same instant while the guest is paused. It lives in the image
cache, under ``checkpoints/<key>/``::

    meta.json       what it is (a booted host, or the result of a stage), its inputs, its size
    state.zst       the migration stream
    disk.qcow2      the overlay, on the cached base image
    OVMF_VARS.fd    the UEFI variables
    used            touched on every use: the least recently used entries go first

The key (``spec.machine_key``, ``spec.stage_key``) covers everything that made the state, so a
changed image, machine, playbook, role or variable is a different key and a miss: a stale
checkpoint is never used. The cache is kept under a size cap (``$GPUPROV_LAB_CACHE_CAP_GIB``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from gpuprov.errors import LabFailure
from gpuprov.lab.locking import exclusive
from gpuprov.lab.qmp import Qmp, QmpError
from gpuprov.lab.spec import GIB, HostFiles

DEFAULT_CAP_GIB = 20
STATE_FILE = "state.zst"
_FILES = ("meta.json", STATE_FILE, "disk.qcow2", "OVMF_VARS.fd")


@dataclass(frozen=True)
class Entry:
    key: str
    dir: Path
    meta: dict
    size: int
    last_used: float

    @property
    def state(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def incoming(self) -> str:
        """QEMU's ``-incoming`` for this checkpoint."""
        return f"exec:zstd -dcq {self.state}"


class CheckpointCache:
    def __init__(self, root: Path, cap_bytes: int | None = None) -> None:
        self.root = root
        cap_gib = float(os.environ.get("GPUPROV_LAB_CACHE_CAP_GIB", DEFAULT_CAP_GIB))
        self.cap = cap_bytes if cap_bytes is not None else int(cap_gib * GIB)
        self.key_file = root / "id_ed25519"

    # -- reading -----------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        entry_dir = self.root / key
        if not all((entry_dir / name).is_file() for name in _FILES):
            return None
        try:
            meta = json.loads((entry_dir / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        size = sum((entry_dir / name).stat().st_blocks * 512 for name in _FILES)
        used = entry_dir / "used"
        last_used = used.stat().st_mtime if used.exists() else meta.get("created", 0)
        return Entry(key, entry_dir, meta, size, last_used)

    def entries(self) -> list[Entry]:
        """Every complete entry, most recently used first."""
        if not self.root.is_dir():
            return []
        found = [e for d in self.root.iterdir() if d.is_dir() and (e := self.get(d.name))]
        return sorted(found, key=lambda e: e.last_used, reverse=True)

    # -- writing -----------------------------------------------------------------------------

    def ensure_key(self) -> Path:
        """The key a checkpoint's root account trusts, so any lab can get into a restored
        host once and hand it that lab's own key (``Lab._take_identity``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with exclusive(self.root):
            if not self.key_file.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                                "gpuprov-lab-checkpoints", "-f", str(self.key_file)],
                               check=True, stdin=subprocess.DEVNULL, capture_output=True)
        return self.key_file

    def store(self, key: str, meta: dict, qmp_socket: Path, files: HostFiles) -> Entry:
        """Checkpoint the running host behind ``qmp_socket``; it runs on afterwards.

        The guest is paused from before the state is written until its disk and UEFI
        variables are copied, so the three belong to one instant.
        """
        if entry := self.get(key):
            return entry
        self.root.mkdir(parents=True, exist_ok=True)
        work = self.root / f".{key}.{os.getpid()}.partial"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        started = time.monotonic()
        try:
            with Qmp(qmp_socket, timeout=30) as qmp:
                qmp.execute("stop")
                try:
                    qmp.execute("migrate", uri=f"exec:zstd -q -1 -T2 -o {work / STATE_FILE}")
                    qmp.wait_for_migration("saving the machine", timeout=300)
                    _copy(files.disk, work / "disk.qcow2")
                    _copy(files.ovmf_vars, work / "OVMF_VARS.fd")
                finally:
                    qmp.execute("cont")
        except (OSError, QmpError, subprocess.CalledProcessError) as error:
            shutil.rmtree(work, ignore_errors=True)
            raise LabFailure(f"could not checkpoint {files.dir.name}: {error}",
                             "the host runs on; `lab up --cold` skips checkpoints") from error
        meta = {**meta, "key": key, "created": time.time(),
                "seconds_to_store": round(time.monotonic() - started, 2)}
        (work / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        with exclusive(self.root):
            target = self.root / key
            if target.exists():  # another lab up stored the same state meanwhile
                shutil.rmtree(work)
            else:
                work.rename(target)
            self._evict(keep=key)
        entry = self.get(key)
        if entry is None:
            raise LabFailure(f"checkpoint {key} vanished right after it was stored")
        return entry

    def restore_into(self, entry: Entry, files: HostFiles) -> None:
        """Give a new host this checkpoint's disk and UEFI variables; mark the entry used."""
        with exclusive(self.root):
            _copy(entry.dir / "disk.qcow2", files.disk)
            _copy(entry.dir / "OVMF_VARS.fd", files.ovmf_vars)
            (entry.dir / "used").touch()

    def discard(self, key: str) -> None:
        with exclusive(self.root):
            shutil.rmtree(self.root / key, ignore_errors=True)

    def prune(self) -> tuple[int, int]:
        """Remove every entry; (how many, bytes freed)."""
        entries = self.entries()
        with exclusive(self.root):
            for entry in entries:
                shutil.rmtree(entry.dir, ignore_errors=True)
            for partial in self.root.glob(".*.partial"):
                shutil.rmtree(partial, ignore_errors=True)
        return len(entries), sum(e.size for e in entries)

    def _evict(self, keep: str) -> None:
        """Drop least recently used entries until the cache fits its cap (never ``keep``)."""
        entries = self.entries()
        total = sum(e.size for e in entries)
        for entry in reversed(entries):
            if total <= self.cap:
                break
            if entry.key != keep:
                shutil.rmtree(entry.dir, ignore_errors=True)
                total -= entry.size


def _copy(source: Path, target: Path) -> None:
    subprocess.run(["cp", "--reflink=auto", "--sparse=always", str(source), str(target)],
                   check=True, capture_output=True)
