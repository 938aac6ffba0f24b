"""Hold Ubuntu's or the RHEL family's NVIDIA driver at one version, and set up where it comes
from: pure, over the `repository:` entries of gpuprov/data/nvidia/distros.yaml.

Debian's pins are planned from its real archive (gpuprov/plan/apt_pins.py, ``gpuprov driver
pins``), every package of the driver's family at its exact version. These distros' archives are
not reachable from gpuprov's test machines, so here the pins are built from the data and one
version the caller names, without reading any package records:

- Ubuntu: an apt preferences file that pins each matched package to the driver's upstream
  version, any Ubuntu revision of it (``Pin: version 535.261.03-*``: a rebuild of the same driver
  for a security fix or a new release changes only the revision), and the same packages held
  with ``apt-mark hold``. The packages come from Ubuntu's own archive: nothing to add.
- RHEL family: the nvidia-driver module stream of the branch, and one ``dnf versionlock`` entry
  per matched package at the exact epoch:version-release; before those, the commands that add
  NVIDIA's CUDA repository, its key, EPEL (for dkms) and the versionlock plugin.

What is pinned is the matched packages only: unlike Debian's plan, nothing here knows which other
NVIDIA packages they pull in, or whether those fit together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gpuprov.errors import UsageError
from gpuprov.plan.apt_pins import PinPlan
from gpuprov.plan.driver import DriverData, DriverMatch

# A driver's upstream version: 535.261.03, and 535.54 for the older two-part ones.
_UPSTREAM = r"\d+\.\d+(?:\.\d+)?"
# Ubuntu: the upstream version, or a whole Debian version of it, whose revision the pin drops.
# No epoch: Ubuntu's driver packages have none, and apt would match the glob against it.
_UBUNTU_VERSION = re.compile(rf"(?P<upstream>{_UPSTREAM})(?:-[0-9A-Za-z.+~]+)?")
# RHEL: epoch:version-release, as ``dnf list --showduplicates`` prints it; a versionlock entry
# needs all three, and a missing epoch would lock to epoch 0.
_RPM_VERSION = re.compile(
    rf"(?P<epoch>\d+):(?P<upstream>{_UPSTREAM})-(?P<release>[0-9A-Za-z._+~]+)")
# EPEL 9's epel-release ships this helper; it enables CodeReady Builder on RHEL (through
# subscription-manager) and on its rebuilds (crb) alike, which NVIDIA's guide does per distro.
CRB_ENABLE = "/usr/bin/crb enable"
# dnf reads /etc/dnf/plugins/versionlock.list only through this plugin (from dnf-plugins-core).
VERSIONLOCK_PLUGIN = "python3-dnf-plugin-versionlock"


@dataclass(frozen=True)
class DistroPins:
    """What would keep the driver on an Ubuntu or RHEL-family host (the nvidia_driver role
    installs on Debian only; this is data, not proven on a real host)."""

    distro: str
    family: str  # ubuntu | redhat
    branch: int
    driver_version: str  # as pinned: upstream (Ubuntu) or epoch:version-release (RHEL)
    modules: str
    packages: list[str]  # the matched packages, each pinned
    sources: list[str]  # where they come from: suites and component, or repositories
    setup: list[str]  # commands that add those sources, in order; none on Ubuntu
    preferences: str | None = None  # Ubuntu: the file for /etc/apt/preferences.d/
    hold: list[str] = field(default_factory=list)  # Ubuntu: apt-mark hold
    module_stream: str | None = None  # RHEL: dnf module enable
    versionlock: list[str] = field(default_factory=list)  # RHEL: versionlock.list entries

    def to_json(self) -> dict:
        return dict(self.__dict__)


def plan_distro_pins(data: DriverData, found: DriverMatch, version: str, *,
                     headless: bool = False) -> DistroPins:
    """Pin ``found``'s packages (its compute-only set with ``headless``) at ``version``;
    UsageError for Debian, or a version that is malformed or of another branch."""
    distro = data.distros[found.distro]
    family = distro["family"]
    if family == "debian":
        raise UsageError(
            f"{found.distro_name}'s pins come from its archive, not from distros.yaml",
            f"use gpuprov driver pins --gpu {found.gpu} --distro {found.distro}")
    if family not in ("ubuntu", "redhat") or "repository" not in distro:
        raise UsageError(f"gpuprov has no repository data for {found.distro_name}")
    packages = list(found.headless if headless else found.packages)
    if family == "ubuntu":
        return _ubuntu(distro, found, _version(_UBUNTU_VERSION, version, found,
                                               "such as 535.261.03"), packages)
    return _redhat(distro, found, _version(_RPM_VERSION, version, found,
                                           "epoch:version-release, such as 3:550.163.01-1.el9"),
                   packages)


def _version(pattern: re.Pattern, text: str, found: DriverMatch, form: str) -> re.Match:
    parsed = pattern.fullmatch(text.strip())
    if parsed is None:
        raise UsageError(f"{text!r} is not a driver version for {found.distro_name}",
                         f"give it as {form}")
    branch = int(parsed["upstream"].split(".")[0])
    if branch != found.branch:
        raise UsageError(
            f"driver {parsed['upstream']} is of branch {branch}, and the match is branch "
            f"{found.branch} ({', '.join(found.packages)})",
            f"give a version of branch {found.branch}, the one the match chose for this card")
    return parsed


def _ubuntu(distro: dict, found: DriverMatch, version: re.Match,
            packages: list[str]) -> DistroPins:
    repository = distro["repository"]
    upstream = version["upstream"]
    header = (f"gpuprov: {found.distro_name}, driver {upstream} ({found.modules} modules), "
              "any Ubuntu revision of it.\nA pin above 1000 makes apt take this version, a "
              "downgrade included; the packages are also held.")
    preferences = PinPlan(upstream, {name: f"{upstream}-*" for name in packages}).preferences(
        header)
    return DistroPins(
        distro=found.distro, family="ubuntu", branch=found.branch, driver_version=upstream,
        modules=found.modules, packages=packages,
        sources=[f"{suite.format(codename=distro['codename'])} {repository['component']}"
                 for suite in repository["suites"]],
        setup=[], preferences=preferences, hold=sorted(packages))


def _redhat(distro: dict, found: DriverMatch, version: re.Match,
            packages: list[str]) -> DistroPins:
    repository = distro["repository"]
    evr = f"{version['epoch']}:{version['upstream']}-{version['release']}"
    return DistroPins(
        distro=found.distro, family="redhat", branch=found.branch, driver_version=evr,
        modules=found.modules, packages=packages,
        sources=[repository["repo_file"], repository["epel_release"]],
        setup=[f"dnf install -y {repository['epel_release']}",
               CRB_ENABLE,
               f"rpm --import {repository['gpg_key']}",
               f"dnf config-manager --add-repo {repository['repo_file']}",
               f"dnf install -y {VERSIONLOCK_PLUGIN}"],
        module_stream=found.module_stream,
        # name-epoch:version-release.arch, the form dnf versionlock writes; any arch.
        versionlock=[f"{name}-{evr}.*" for name in sorted(packages)])
