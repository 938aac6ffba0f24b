"""The Linux kernel command line, parsed the way the kernel reads it.

Parameters are separated by spaces; double quotes group spaces into one parameter
(``dyndbg="file x.c +p"``, or ``"key=a b"``) and are removed; a key may repeat (the kernel hands
each occurrence to its handler, so for most switches the last one wins); everything after a
lone ``--`` belongs to init, not to the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

# The iommu role's parser, so that gpuprov and the role read a command line alike.
from gpuprov.ansible.roles.iommu.filter_plugins.kernel_cmdline import cmdline_param, cmdline_tokens


@dataclass(frozen=True)
class Param:
    key: str
    value: str | None  # None for a bare flag such as ``quiet``

    def __str__(self) -> str:
        if self.value is None:
            return self.key
        value = f'"{self.value}"' if " " in self.value else self.value
        return f"{self.key}={value}"


@dataclass(frozen=True)
class KernelCmdline:
    """A parsed command line; ``params`` in order, repeats kept; ``init_args`` after ``--``."""

    text: str
    params: tuple[Param, ...]
    init_args: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> KernelCmdline:
        params: list[Param] = []
        tokens = cmdline_tokens(text)
        init_args: tuple[str, ...] = ()
        for index, token in enumerate(tokens):
            if token == "--":
                init_args = tuple(t.replace('"', "") for t in tokens[index + 1:])
                break
            params.append(Param(*cmdline_param(token)))
        return cls(text.strip(), tuple(params), init_args)

    def __contains__(self, key: str) -> bool:
        return any(p.key == key for p in self.params)

    def values(self, key: str) -> list[str | None]:
        """Every value given for ``key``, in order (None for a bare occurrence)."""
        return [p.value for p in self.params if p.key == key]

    def get(self, key: str, default: str | None = None) -> str | None:
        """The last value of ``key`` (the one most kernel switches honour)."""
        values = [v for v in self.values(key) if v is not None]
        return values[-1] if values else default

    def has(self, key: str, value: str) -> bool:
        """True if some occurrence of ``key`` lists ``value`` (``intel_iommu=on,igfx_off``)."""
        return any(v is not None and value in v.split(",") for v in self.values(key))

    def __str__(self) -> str:
        return self.text
