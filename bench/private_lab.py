"""A lab in a private directory for one benchmark run, destroyed however the run ends.

What the lab kept of failed or recovered boots (``failures/``) is moved to the default lab's
``failures/`` first, so the evidence outlives the run.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from gpuprov.lab.checkpoints import CheckpointCache
from gpuprov.lab.hosts import Lab, default_lab_dir
from gpuprov.lab.image import ImageCache


@contextlib.contextmanager
def private_lab(cache: ImageCache | None = None,
                checkpoints: CheckpointCache | None = None) -> Iterator[Lab]:
    lab_dir = Path(tempfile.mkdtemp(prefix="gpuprov-bench-lab-"))
    lab = Lab(lab_dir, cache, checkpoints)
    try:
        yield lab
    finally:
        for name in lab.names():
            lab.destroy(name)
        if lab.failures_dir.is_dir():
            kept = default_lab_dir() / "failures"
            kept.mkdir(parents=True, exist_ok=True)
            for record in lab.failures_dir.iterdir():
                shutil.move(str(record), kept / record.name)
                print(f"kept a failed boot's evidence: {kept / record.name}", file=sys.stderr)
        shutil.rmtree(lab_dir, ignore_errors=True)


def quiet(*_args) -> None:
    """A progress callback that reports nothing: the figures are the output."""
