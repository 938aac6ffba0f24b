"""Passthrough VMs: one interface (``base``), one backend per hypervisor.

``gpuprov vm passthrough --hypervisor NAME`` looks the backend up in ``BACKENDS`` and hands it a
``PassthroughRequest``; each backend module talks to its own API (proxmoxer, pyvmomi, libvirt)
and keeps its pure planning (what the VM config must become) apart from the calls.
"""

from __future__ import annotations

from importlib import import_module

from gpuprov.errors import UsageError
from gpuprov.hypervisors.base import (
    Backend,
    Confirm,
    PassthroughRequest,
    PassthroughResult,
    Report,
    VmShape,
)

# name -> "module:factory"; imported only when chosen, so one backend's client library
# (pyvmomi, proxmoxer) is never loaded for another.
BACKENDS = {
    "proxmox": "gpuprov.hypervisors.proxmox:backend",
    "esxi": "gpuprov.hypervisors.esxi:backend",
    "libvirt": "gpuprov.hypervisors.libvirt:backend",
}


def load_backend(name: str) -> Backend:
    target = BACKENDS.get(name)
    if target is None:
        raise UsageError(f"unknown hypervisor {name!r}",
                         f"choose one of: {', '.join(BACKENDS)}")
    module_name, _, factory = target.partition(":")
    try:
        module = import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        raise UsageError(f"the {name} backend is not yet available",
                         "see the project's issues for when it lands") from error
    return getattr(module, factory)()


__all__ = ["BACKENDS", "Backend", "Confirm", "PassthroughRequest", "PassthroughResult",
           "Report", "VmShape", "load_backend"]
