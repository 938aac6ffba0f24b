"""Split the output of ``probe.sh`` (and ``guest_probe.sh``) into its sections.

The probe prints ``### NAME`` (or ``### NAME ARG`` for files) before each fact, optionally with a
status in brackets: ``[absent]``, ``[no command]`` or ``[exit N]``. Only those exact shapes with a
known NAME count as headers, so a ``### comment`` inside a printed file stays content.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

# Every section the probe prints; keep in step with probe.sh.
SECTION_NAMES = frozenset({
    "probe", "cpu_vendor", "kernel", "cmdline", "firmware", "secure_boot", "acpi_tables",
    "iommu_groups", "iommu_class", "kernel_config", "dmesg", "lspci", "pci_sysfs", "file",
    "proxmox_boot_tool", "bootctl_is_installed", "bootctl_status", "root_fs", "root_disk",
    "mgmt_nic", "dev_vfio", "vfio_modules",
})

_HEADER = re.compile(
    r"^### (?P<name>[a-z_]+)(?: (?P<arg>/\S*))?(?: \[(?P<status>absent|no command|exit \d+)\])?$"
)


@dataclass(frozen=True)
class Section:
    """One probe section: ``status`` is "ok", "absent", "no command" or "exit N"."""

    name: str
    arg: str | None
    status: str
    lines: tuple[str, ...]

    @property
    def present(self) -> bool:
        """The file or program existed (it may still have failed: see ``exit_code``)."""
        return self.status not in ("absent", "no command")

    @property
    def exit_code(self) -> int | None:
        if self.status == "ok":
            return 0
        if self.status.startswith("exit "):
            return int(self.status.split()[1])
        return None

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def nonblank(self) -> Iterator[str]:
        return (line.strip() for line in self.lines if line.strip())


@dataclass(frozen=True)
class ProbeOutput:
    """The sections by name; files (``### file PATH``) by path."""

    sections: dict[str, Section]
    files: dict[str, Section]

    def get(self, name: str) -> Section:
        """The section ``name``; an absent, empty one when the probe did not print it."""
        return self.sections.get(name, Section(name, None, "absent", ()))

    def file(self, path: str) -> Section:
        return self.files.get(path, Section("file", path, "absent", ()))

    def files_under(self, directory: str) -> list[Section]:
        prefix = directory.rstrip("/") + "/"
        return [s for path, s in sorted(self.files.items()) if path.startswith(prefix)]


def split_sections(text: str, names: frozenset[str] = SECTION_NAMES) -> ProbeOutput:
    """Parse a probe's whole output (``names``: the sections that probe prints); text before
    the first header is ignored."""
    sections: dict[str, Section] = {}
    files: dict[str, Section] = {}
    current: tuple[str, str | None, str] | None = None
    lines: list[str] = []

    def close() -> None:
        if current is None:
            return
        name, arg, status = current
        section = Section(name, arg, status, tuple(lines))
        if name == "file" and arg:
            files[arg] = section
        else:
            sections[name] = section

    for line in text.splitlines():
        match = _HEADER.match(line)
        if match and match["name"] in names:
            close()
            current = (match["name"], match["arg"], match["status"] or "ok")
            lines = []
        elif current is not None:
            lines.append(line)
    close()
    return ProbeOutput(sections, files)
