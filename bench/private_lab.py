"""A lab in a private directory for one benchmark run, destroyed however the run ends."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from gpuprov.lab.hosts import Lab
from gpuprov.lab.image import ImageCache


@contextlib.contextmanager
def private_lab(cache: ImageCache | None = None) -> Iterator[Lab]:
    lab_dir = Path(tempfile.mkdtemp(prefix="gpuprov-bench-lab-"))
    lab = Lab(lab_dir, cache)
    try:
        yield lab
    finally:
        for name in lab.names():
            lab.destroy(name)
        shutil.rmtree(lab_dir, ignore_errors=True)


def quiet(*_args) -> None:
    """A progress callback that reports nothing: the figures are the output."""
