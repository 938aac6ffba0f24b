"""Reading a hypervisor API's endpoint and login from an inventory entry's variables and the
environment, the same way for every backend: the environment wins, empty values count as unset."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gpuprov.errors import UsageError

Picker = Callable[..., str | None]


def picker(variables: Mapping, environ: Mapping[str, str]) -> Picker:
    """``pick(env, *names)``: the environment variable ``env`` if set, else the first inventory
    variable of ``names`` that has a value, else None."""

    def pick(env: str | None, *names: str) -> str | None:
        if env and environ.get(env):
            return environ[env]
        for var in names:
            value = variables.get(var)
            if value not in (None, ""):
                return str(value)
        return None

    return pick


def port_number(text: str, setting: str, name: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"{setting} {text!r} of {name} is not a port number")
    return int(text)
