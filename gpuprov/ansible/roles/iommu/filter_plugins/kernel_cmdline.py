"""Kernel command line arithmetic for the iommu role (pure functions, unit-tested)."""

from __future__ import annotations

import shlex


def _key(param: str) -> str:
    return param.split("=", 1)[0]


def kernel_params_missing(cmdline: str, wanted: list[str]) -> list[str]:
    """The parameters of ``wanted`` whose key ``cmdline`` does not set at all.

    A key the administrator already set (``intel_iommu=on,igfx_off``) is left to them.
    """
    present = {_key(token) for token in shlex.split(cmdline or "")}
    missing: list[str] = []
    for param in wanted:
        if _key(param) not in present and param not in missing:
            missing.append(param)
    return missing


def kernel_cmdline_add(cmdline: str, wanted: list[str]) -> str:
    """``cmdline`` with the missing parameters of ``wanted`` appended."""
    return " ".join([*shlex.split(cmdline or ""), *kernel_params_missing(cmdline, wanted)])


def grub_default_value(text: str, variable: str) -> str:
    """The value of ``variable`` in an /etc/default/grub text (last assignment wins)."""
    value = ""
    for line in (text or "").splitlines():
        line = line.strip()
        if line.startswith(f"{variable}="):
            parts = shlex.split(line[len(variable) + 1:], comments=True)
            value = parts[0] if parts else ""
    return value


class FilterModule:
    def filters(self):
        return {
            "kernel_params_missing": kernel_params_missing,
            "kernel_cmdline_add": kernel_cmdline_add,
            "grub_default_value": grub_default_value,
        }
