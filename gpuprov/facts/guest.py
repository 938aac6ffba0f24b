"""What ``guest_probe.sh`` says about a GPU node or a passthrough VM, parsed; no I/O.

The guest probe is the first of two reads: the distro, the kernel, the cards and the NVIDIA
packages. What the roles' own state scripts then print is read by the roles' filters
(``gpuprov.plan.guest`` calls them), so ``guest inspect`` and the roles' verification judge a
host by the same code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gpuprov.ansible.roles.fabricmanager.filter_plugins.fabricmanager import upstream_version
from gpuprov.facts.sections import split_sections

GUEST_SECTIONS = frozenset({"os_release", "kernel", "cards", "nvidia_packages", "run_installer"})
DISPLAY_CLASS = "03"
NVIDIA_VENDOR = "10de"
# The packages that hold the driver's kernel module; the driver's version is theirs
# (nvidia-kernel-dkms, nvidia-open-kernel-dkms, nvidia-tesla-535-kernel-dkms, ...).
_MODULE_PACKAGE = re.compile(r"nvidia(?:-tesla-\d+)?(?:-open)?-kernel-dkms")


@dataclass(frozen=True)
class GuestCard:
    address: str  # 0000:01:00.0
    ids: str  # vendor:device, 10de:2330
    class_code: str  # 030200
    driver: str | None  # the kernel driver bound to it

    @property
    def is_gpu(self) -> bool:
        return self.class_code.startswith(DISPLAY_CLASS)

    @property
    def is_nvswitch(self) -> bool:
        return self.ids.startswith(NVIDIA_VENDOR + ":") and self.class_code.startswith("0680")

    def to_json(self) -> dict:
        return {"address": self.address, "ids": self.ids, "class": self.class_code,
                "driver": self.driver}


@dataclass(frozen=True)
class GuestFacts:
    os_id: str  # os-release ID: debian, ubuntu, rhel, rocky, ...
    os_version: str  # VERSION_ID: 12, 24.04, 9.4
    os_name: str  # PRETTY_NAME
    codename: str | None
    kernel: str
    cards: tuple[GuestCard, ...]
    packages: dict[str, str] = field(default_factory=dict)  # installed NVIDIA package -> version
    run_installer: str | None = None  # NVIDIA's .run uninstaller, where one is left

    @property
    def distro(self) -> str:
        """The key of gpuprov/data/nvidia/distros.yaml this host would be: debian12,
        ubuntu24.04, rhel9 (the RHEL family by its major version)."""
        if self.os_id in ("rhel", "rocky", "almalinux", "centos"):
            return f"rhel{self.os_version.split('.')[0]}"
        if self.os_id == "debian":
            return f"debian{self.os_version.split('.')[0]}"
        return f"{self.os_id}{self.os_version}"

    @property
    def gpus(self) -> tuple[GuestCard, ...]:
        return tuple(c for c in self.cards if c.is_gpu)

    @property
    def nvswitches(self) -> tuple[GuestCard, ...]:
        return tuple(c for c in self.cards if c.is_nvswitch)

    @property
    def driver_version(self) -> str | None:
        """The upstream version of the installed driver's module package (535.261.03)."""
        for name, version in sorted(self.packages.items()):
            if _MODULE_PACKAGE.fullmatch(name):
                return upstream_version(version)
        return None

    def to_json(self) -> dict:
        return {"os": self.os_name, "distro": self.distro, "kernel": self.kernel,
                "cards": [c.to_json() for c in self.cards], "packages": self.packages,
                "driver_version": self.driver_version, "run_installer": self.run_installer}


def parse_guest_facts(text: str) -> GuestFacts:
    probe = split_sections(text, GUEST_SECTIONS)
    release = {}
    for line in probe.get("os_release").nonblank():
        key, sep, value = line.partition("=")
        if sep:
            release[key] = value.strip().strip('"')
    cards = []
    for line in probe.get("cards").nonblank():
        address, ids, class_code, *driver = line.split()
        cards.append(GuestCard(address, ids.lower(), class_code.lower(),
                               driver[0] if driver else None))
    packages = {}
    for line in probe.get("nvidia_packages").nonblank():
        fields = line.split()
        if len(fields) == 3 and fields[2] in ("ii", "hi"):
            packages[fields[0]] = fields[1]
    kernel = next(probe.get("kernel").nonblank(), "")
    return GuestFacts(
        os_id=release.get("ID", "unknown"), os_version=release.get("VERSION_ID", ""),
        os_name=release.get("PRETTY_NAME", release.get("ID", "an unknown OS")),
        codename=release.get("VERSION_CODENAME") or None, kernel=kernel, cards=tuple(cards),
        packages=packages, run_installer=next(probe.get("run_installer").nonblank(), None))
