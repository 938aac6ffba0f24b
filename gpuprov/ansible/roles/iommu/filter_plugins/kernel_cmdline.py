"""What the kernel command line needs for the IOMMU, and how to write it. Pure functions.

This file is the one source of truth for those rules. The iommu role uses it as its filter
plugin, so the role decides for itself when it runs under plain ``ansible-playbook``.
``gpuprov host inspect`` plans with the same functions (``gpuprov/plan/kernel.py`` imports
this file), so ``host setup`` does exactly what inspect promised. It imports nothing from
Ansible or gpuprov, so both can load it.

The rules:
- Intel: ``intel_iommu=on`` only when the kernel does not turn the IOMMU on by itself
  (``CONFIG_INTEL_IOMMU_DEFAULT_ON``, or Debian's ``..._DEFAULT_ON_INTGPU_OFF``; upstream and
  Proxmox VE from kernel 6.8). An ``intel_iommu=off`` is removed, and ``intel_iommu=on`` takes
  its place.
- AMD: nothing to add. ``amd_iommu=on`` is not a valid switch: the AMD IOMMU is on whenever the
  firmware describes one (IVRS), so only an explicit ``amd_iommu=off`` is in the way.
- ``iommu=off`` turns every IOMMU off, and is removed.
- ``iommu=pt`` only when asked: it trades isolation of host devices for host DMA speed.
"""

from __future__ import annotations

import re
import shlex

_SAFE_WORD = re.compile(r"^[A-Za-z0-9_.,:=/+@%-]+$")
_GRUB_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)=(.*)$")


def cmdline_tokens(text: str) -> list[str]:
    """``text`` split the way the kernel splits it: at spaces outside double quotes. Each token
    keeps its quotes, so that a rewritten command line keeps every untouched token verbatim."""
    tokens, current, quoted = [], "", False
    for char in text or "":
        if char == '"':
            quoted = not quoted
        if char.isspace() and not quoted:
            if current:
                tokens.append(current)
            current = ""
        else:
            current += char
    if current:
        tokens.append(current)
    return tokens


def cmdline_param(token: str) -> tuple[str, str | None]:
    """A token's key and value, quotes removed as the kernel removes them (value None for a
    bare flag such as ``quiet``)."""
    key, sep, value = token.replace('"', "").partition("=")
    return key, (value if sep else None)


def _kernel_params(text: str) -> list[tuple[str, str | None]]:
    """The kernel's parameters only: what follows a lone ``--`` belongs to init."""
    tokens = cmdline_tokens(text)
    if "--" in tokens:
        tokens = tokens[:tokens.index("--")]
    return [cmdline_param(token) for token in tokens]


def iommu_cmdline_change(cmdline: str, *, vendor: str | None,
                         kernel_enables_intel_iommu: bool | None = None,
                         passthrough: bool = False, intel_iommu_on: str = "auto",
                         extra: list[str] | tuple[str, ...] = (),
                         kernel: str = "the running kernel") -> dict:
    """What to add to and remove from ``cmdline`` (the configured command line), and why:
    ``{"add": [...], "remove": [...], "reasons": [...]}``, one reason per decision.

    ``vendor`` is "intel" or "amd"; ``kernel_enables_intel_iommu`` is None when the kernel's
    config was not readable; ``intel_iommu_on`` is "auto" or "always" (the role's
    ``iommu_intel_iommu_on``); ``extra`` parameters are added when their key is not set at all,
    since a key the administrator set is theirs to keep.
    """
    params = _kernel_params(cmdline)

    def values(key: str) -> list[str]:
        return [v for k, v in params if k == key and v is not None]

    def off(key: str) -> list[str]:
        return [f"{key}={v}" for v in values(key) if "off" in v.split(",")]

    def has(key: str, value: str) -> bool:
        return any(value in v.split(",") for v in values(key))

    add: list[str] = []
    remove: list[str] = []
    reasons: list[str] = []

    if off("iommu"):
        remove += off("iommu")
        reasons.append("iommu=off turns every IOMMU off: remove it")

    if vendor == "intel":
        if off("intel_iommu"):
            remove += off("intel_iommu")
            add.append("intel_iommu=on")
            reasons.append("intel_iommu=off is set: replace it with intel_iommu=on")
        elif has("intel_iommu", "on"):
            reasons.append("intel_iommu=on is already set")
        elif intel_iommu_on == "always":
            add.append("intel_iommu=on")
            reasons.append("intel_iommu=on asked for always (iommu_intel_iommu_on)")
        elif kernel_enables_intel_iommu:
            reasons.append(f"kernel {kernel} turns the Intel IOMMU on by default: "
                           "intel_iommu=on is not needed")
        else:
            add.append("intel_iommu=on")
            why = "does not turn" if kernel_enables_intel_iommu is False \
                else "may not turn (its config was not readable)"
            reasons.append(f"kernel {kernel} {why} the Intel IOMMU on by default")
    elif vendor == "amd":
        if off("amd_iommu"):
            remove += off("amd_iommu")
            reasons.append("amd_iommu=off is set: remove it (there is no amd_iommu=on)")
        else:
            reasons.append("AMD: the IOMMU is on whenever the firmware describes it (IVRS); "
                           "amd_iommu=on is not a valid switch")

    if passthrough:
        if (values("iommu") or [None])[-1] == "pt":
            reasons.append("iommu=pt is already set")
        else:
            add.append("iommu=pt")
            reasons.append("iommu=pt asked for: host devices skip DMA translation (faster host "
                           "I/O, less isolation between host devices)")

    keys = {key for key, _ in params}
    for param in extra:
        key = cmdline_param(param)[0]
        if key in keys:
            reasons.append(f"{param} not added: {key} is already set")
        elif param not in add:
            add.append(param)
            reasons.append(f"{param} asked for (iommu_extra_kernel_params)")
    return {"add": add, "remove": list(dict.fromkeys(remove)), "reasons": reasons}


def cmdline_without(cmdline: str, remove: list[str]) -> str:
    """``cmdline`` without the kernel parameters in ``remove`` (compared as the kernel reads
    them); every other token stays as written, init's arguments after ``--`` included."""
    unwanted = {cmdline_param(p) for p in remove}
    tokens = cmdline_tokens(cmdline)
    end = tokens.index("--") if "--" in tokens else len(tokens)
    kept = [t for i, t in enumerate(tokens) if i >= end or cmdline_param(t) not in unwanted]
    return " ".join(kept)


def kernel_cmdline_apply(cmdline: str, change: dict) -> str:
    """``cmdline`` (an /etc/kernel/cmdline) with ``change`` made: removals dropped, additions
    appended before init's arguments. Applying the change computed on the result adds nothing."""
    tokens = cmdline_tokens(cmdline_without(cmdline, change["remove"]))
    end = tokens.index("--") if "--" in tokens else len(tokens)
    return " ".join([*tokens[:end], *change["add"], *tokens[end:]])


def _shell_value(raw: str, variables: dict[str, str]) -> str:
    """A shell assignment's right-hand side: quotes, comments and GRUB's two variables."""
    if not raw.lstrip().startswith("'"):
        for name, value in variables.items():
            raw = re.sub(r"\$\{" + name + r"\}|\$" + name + r"\b", lambda _m, v=value: v, raw)
    try:
        words = shlex.split(raw, comments=True)
    except ValueError:  # unbalanced quotes: take the text as it stands
        words = raw.strip().strip("\"'").split()
    return " ".join(" ".join(words).split())


def grub_cmdline_values(text: str) -> dict:
    """``GRUB_CMDLINE_LINUX`` and ``GRUB_CMDLINE_LINUX_DEFAULT`` after GRUB's settings files,
    given in the order grub-mkconfig sources them (/etc/default/grub, then
    /etc/default/grub.d/*.cfg), read as assignments without running them."""
    values = {"GRUB_CMDLINE_LINUX": "", "GRUB_CMDLINE_LINUX_DEFAULT": ""}
    for line in (text or "").splitlines():
        match = _GRUB_ASSIGNMENT.match(line)
        if match:
            values[match[1]] = _shell_value(match[2], values)
    return values


def grub_cmdline(values: dict) -> str:
    """The command line GRUB's normal entries get: GRUB_CMDLINE_LINUX, then _DEFAULT."""
    return " ".join(v for v in (values["GRUB_CMDLINE_LINUX"],
                                values["GRUB_CMDLINE_LINUX_DEFAULT"]) if v)


def grub_dropin(values: dict, change: dict) -> list[str]:
    """The assignments of the iommu role's GRUB drop-in, which is sourced after GRUB's other
    settings: empty when ``change`` changes nothing.

    Additions are appended to GRUB_CMDLINE_LINUX_DEFAULT (normal entries, not recovery). A
    variable that holds a parameter to remove is set again, to its value without it: that
    value is a copy of the administrator's, taken when the role ran.
    """
    lines = []
    linux, default = values["GRUB_CMDLINE_LINUX"], values["GRUB_CMDLINE_LINUX_DEFAULT"]
    if cmdline_without(linux, change["remove"]) != linux:
        kept = cmdline_tokens(cmdline_without(linux, change["remove"]))
        lines.append(f"GRUB_CMDLINE_LINUX={shlex.quote(' '.join(kept))}")
    if cmdline_without(default, change["remove"]) != default:
        kept = cmdline_tokens(cmdline_without(default, change["remove"]))
        lines.append(f"GRUB_CMDLINE_LINUX_DEFAULT={shlex.quote(' '.join(kept + change['add']))}")
    elif change["add"]:
        added = " ".join(change["add"])
        if not all(_SAFE_WORD.match(p) for p in change["add"]):
            added = f'"{shlex.quote(added)}"'  # closes and reopens the double quotes around it
        lines.append(f'GRUB_CMDLINE_LINUX_DEFAULT="${{GRUB_CMDLINE_LINUX_DEFAULT}} {added}"')
    return lines


class FilterModule:
    def filters(self):
        return {
            # wants: the keyword arguments of iommu_cmdline_change, as one dict.
            "iommu_cmdline_change": lambda cmdline, wants: iommu_cmdline_change(cmdline, **wants),
            "kernel_cmdline_apply": kernel_cmdline_apply,
            "grub_cmdline_values": grub_cmdline_values,
            "grub_cmdline": grub_cmdline,
            "grub_dropin": grub_dropin,
        }
