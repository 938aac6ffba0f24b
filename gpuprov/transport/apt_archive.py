"""A Debian archive as apt sees it, from a private directory: no root needed, nothing installed,
and the machine's own apt configuration, lists and locks untouched.

Used by ``gpuprov driver pins`` (the package records of the suites a host would use) and by
scripts/generate-nvidia-data.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from gpuprov.errors import EnvironmentProblem, HostUnreachable

COMPONENTS = "main contrib non-free non-free-firmware"
# user:password@ in a mirror's URL (apt's own way to log in to a private mirror).
_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]+@")
_APT_HELPER = "/usr/lib/apt/apt-helper"


class PrivateApt:
    """apt-get and apt-cache over ``work`` (an empty directory the caller owns)."""

    def __init__(self, work: Path, sources: list[str]) -> None:
        """``sources``: sources.list lines (``deb URL SUITE COMPONENTS``)."""
        if shutil.which("apt-get") is None:
            raise EnvironmentProblem("reading a Debian archive needs apt, which this machine "
                                     "does not have", "run this on a Debian or Ubuntu machine")
        self.work = work
        for sub in ("lists/partial", "cache/archives/partial", "preferences.d"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        (work / "sources.list").write_text("".join(f"{line}\n" for line in sources))
        (work / "status").touch()  # nothing installed

    def _options(self) -> list[str]:
        work = self.work
        options = [f"-oDir::Etc::SourceList={work / 'sources.list'}",
                   "-oDir::Etc::SourceParts=/dev/null", "-oDir::Etc::Preferences=/dev/null",
                   f"-oDir::Etc::PreferencesParts={work / 'preferences.d'}",
                   f"-oDir::State::Lists={work / 'lists'}",
                   f"-oDir::State::status={work / 'status'}",
                   f"-oDir::Cache={work / 'cache'}", "-oDebug::NoLocking=1",
                   "-oAPT::Architecture=amd64", "-oAPT::Architectures::=amd64"]
        if os.geteuid() == 0:  # apt's _apt user cannot write to a private directory
            options.append("-oAPT::Sandbox::User=root")
        return options

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        tool = "apt-get" if args[0] in ("update", "download", "install") else "apt-cache"
        result = subprocess.run([tool, *self._options(), *args], cwd=self.work,
                                capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                check=False)
        if check and result.returncode != 0:
            raise EnvironmentProblem(f"{tool} {args[0]} failed: {_last_error(result)}")
        return result

    def update(self) -> None:
        result = self.run("update", check=False)
        # apt-get update exits 0 even when a source failed; its "W:"/"E:" lines say so.
        failed = [line for line in result.stderr.splitlines()
                  if line.startswith(("E:", "W: Failed to fetch"))]
        if result.returncode != 0 or failed:
            said = redact(failed[0]) if failed else _last_error(result)
            raise HostUnreachable(f"the archive could not be read: {said}",
                                  "check the mirror URLs and this machine's network")

    def records(self) -> str:
        """Every package record of the fetched suites, as one Packages text."""
        texts = []
        for path in sorted((self.work / "lists").glob("*_Packages*")):
            texts.append(subprocess.run([_APT_HELPER, "cat-file", str(path)], check=True,
                                        capture_output=True, text=True).stdout)
        return "\n\n".join(texts)


def redact(text: str) -> str:
    """``text`` with the credentials of any URL in it replaced by ***."""
    return _CREDENTIALS.sub(r"\1***@", text)


def _last_error(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
    return redact(lines[-1]) if lines else f"exit {result.returncode}"
