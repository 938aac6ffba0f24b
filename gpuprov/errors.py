"""The one exception family gpuprov raises for decided failures, and the exit codes.

Every error carries what went wrong and, where there is one, what to do about it; the CLI prints
both and exits with the error's code (see ``gpuprov.cli.app``). Anything else escaping is a bug.

The exit codes are one contract for every command (README, "Exit codes"):

==  =====================================================================
0   done, or nothing to do
1   failed while applying (or a lab host failed, or this machine lacks something)
2   bad input, or not confirmed; nothing was changed
3   not found: a host, a GPU, a VM, an inventory the user named
4   unreachable: a host or an API did not answer, or refused the login
10  needs setup: inspected, and something is still to do
20  refused as unsafe; nothing was changed
==  =====================================================================

Over several hosts, the run exits with its worst host's code, worst first in this order:
1, 4, 20, 3, 10, 0 (see ``worst``).
"""

from __future__ import annotations

from collections.abc import Iterable

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNREACHABLE = 4
EXIT_NEEDS_SETUP = 10
EXIT_REFUSED = 20

# A failed change needs a person first; then a host nobody could reach (its state is unknown);
# then what was refused, what does not exist, and what only still needs doing.
SEVERITY = (EXIT_FAILED, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_NOT_FOUND, EXIT_NEEDS_SETUP,
            EXIT_USAGE, EXIT_OK)


def worst(codes: Iterable[int]) -> int:
    """The exit code of a run over several hosts: its worst host's (0 for none)."""
    codes = list(codes)
    return min(codes, key=lambda c: SEVERITY.index(c) if c in SEVERITY else 0, default=EXIT_OK)


class GpuprovError(Exception):
    """A failure gpuprov understood: ``message`` says what, ``hint`` says what to do."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(GpuprovError, ValueError):
    """The input was wrong (a name, a flag, an address); nothing was changed."""

    exit_code = EXIT_USAGE


class NotConfirmed(UsageError):
    """A change that needs a yes did not get one (no --yes, no terminal, or the answer no)."""


class NotFoundError(GpuprovError, LookupError):
    """Something the user named does not exist (a lab host, an inventory host, a device)."""

    exit_code = EXIT_NOT_FOUND


class Refused(GpuprovError):
    """A safety check said no; nothing was changed."""

    exit_code = EXIT_REFUSED


class EnvironmentProblem(GpuprovError):
    """This machine lacks something gpuprov needs (a program, firmware, disk space, a free port)."""


class LabFailure(GpuprovError):
    """A lab host or its image failed while being built or booted."""


class HostUnreachable(GpuprovError):
    """A managed host, or an API, did not accept a session (down, wrong port, key, host key or
    password)."""

    exit_code = EXIT_UNREACHABLE
