"""Commands in a Debian root file system on this machine (debootstrap, then chroot), with their
output kept in a build log rather than on the terminal.

Used by the lab's image build and by ``gpuprov driver build``.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from gpuprov.errors import EnvironmentProblem
from gpuprov.transport.apt_archive import redact

CHROOT_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "DEBIAN_FRONTEND": "noninteractive",
    "LANG": "C.UTF-8",
    # bootctl and kernel-install refuse an ESP that is not a mounted vfat file system; at build
    # time it is a directory that is copied into the FAT image afterwards.
    "SYSTEMD_RELAX_ESP_CHECKS": "1",
}
_POLICY = "#!/bin/sh\n# gpuprov build chroot: start no services.\nexit 101\n"

Run = Callable[..., None]


class BuildLog:
    """Runs commands with their output appended to ``path``; a failure raises ``failure``
    (the caller's error type) naming the command and the log. A mirror's user:password (in
    an argument, or in what a tool prints, such as debootstrap's failed URL) never reaches
    the log or the error."""

    def __init__(self, path: Path, failure: type[Exception], what: str, missing_hint: str):
        self.path = path
        self._failure = failure
        self._what = what
        self._missing_hint = missing_hint

    def run(self, argv: list[str], env: dict | None = None) -> None:
        with open(self.path, "a") as log:
            log.write(f"\n$ {redact(' '.join(argv))}\n")
            log.flush()
            try:
                result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env=env, stdin=subprocess.DEVNULL, check=False,
                                        text=True, errors="replace")
            except FileNotFoundError as missing:
                raise EnvironmentProblem(f"the {self._what} needs {argv[0]!r}, which is not "
                                         "installed", self._missing_hint) from missing
            log.write(redact(result.stdout))
        if result.returncode != 0:
            raise self._failure(
                f"{self._what} step failed (exit {result.returncode}): "
                f"{redact(' '.join(argv[:3]))} ...",
                f"see the build log: {self.path}",
            )


@contextlib.contextmanager
def chroot(root: Path, log: BuildLog) -> Iterator[Callable[[list[str]], None]]:
    """Run commands inside ``root`` with /proc mounted and services kept from starting."""
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text(_POLICY)
    policy.chmod(0o755)
    proc = root / "proc"
    log.run(["mount", "-t", "proc", "proc", str(proc)])
    try:
        yield lambda argv: log.run(["chroot", str(root), *argv], env=CHROOT_ENV)
    finally:
        subprocess.run(["umount", "--lazy", str(proc)], check=False)
        policy.unlink(missing_ok=True)


def remove_tree(path: Path) -> None:
    """Delete a root file system, never following a leftover /proc mount into this machine's."""
    if not path.exists():
        return
    subprocess.run(["umount", "--lazy", str(path / "proc")], check=False,
                   stderr=subprocess.DEVNULL)
    shutil.rmtree(path)
