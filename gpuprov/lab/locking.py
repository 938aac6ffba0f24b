"""One lock file per state directory, so concurrent gpuprov processes change it one at a time."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive(directory: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold ``directory/.lock`` exclusively (waiting for it) for the ``with`` block.
    ``on_wait`` is called first when another process holds it, to say why nothing moves."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield
