"""Sizes as users type them (``8G``, ``512M``, ``8192``), parsed without I/O."""

from __future__ import annotations

import re

from gpuprov.errors import UsageError

_SIZE = re.compile(r"^(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[KMGT]?)(?:i?B)?$", re.IGNORECASE)
_FACTOR = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str, *, default_unit: str, what: str) -> int:
    """Bytes in ``text``: a number with an optional binary unit (K, M, G, T; ``GiB``/``GB``
    both mean GiB, as in Proxmox and libvirt); a bare number is in ``default_unit``."""
    match = _SIZE.match(str(text).strip())
    if not match:
        raise UsageError(f"{what} {text!r} is not a size",
                         f"give a number with an optional unit, e.g. 8G, 512M or 8192 "
                         f"(a bare number is in {default_unit}iB)")
    unit = (match["unit"] or default_unit).upper()
    size = int(float(match["number"]) * _FACTOR[unit])
    if size <= 0:
        raise UsageError(f"{what} {text!r} must be larger than zero")
    return size
