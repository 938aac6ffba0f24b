"""The one exception family gpuprov raises for decided failures.

Every error carries what went wrong and, where there is one, what to do about it; the CLI prints
both and exits with the error's code (see ``gpuprov.cli.app``). Anything else escaping is a bug.
"""

from __future__ import annotations


class GpuprovError(Exception):
    """A failure gpuprov understood: ``message`` says what, ``hint`` says what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(GpuprovError, ValueError):
    """The input was wrong (a name, a flag, an address); nothing was changed."""

    exit_code = 2


class NotFoundError(GpuprovError, LookupError):
    """Something the user named does not exist (a lab host, an inventory host, a device)."""

    exit_code = 3


class EnvironmentProblem(GpuprovError):
    """This machine lacks something gpuprov needs (a program, firmware, disk space, a free port)."""

    exit_code = 4


class LabFailure(GpuprovError):
    """A lab host or its image failed while being built or booted."""

    exit_code = 5


class HostUnreachable(GpuprovError):
    """A managed host did not accept an SSH session (down, wrong port, key or host key)."""

    exit_code = 4
