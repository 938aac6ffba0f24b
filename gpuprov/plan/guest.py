"""The guest stage's decisions, pure: which driver a node's cards need, how the node stands
(ready, needs setup, unsafe), and the variables ``playbooks/guest_setup.yml`` gets.

A node is judged by the roles' own readers (their ``filter_plugins``) over the roles' own state
scripts, so ``gpuprov guest inspect`` and each role's verification never disagree; this module
adds what only the whole stage knows: the cards, the matched branch, the runtimes to wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

import yaml

from gpuprov.ansible.roles.container_toolkit.filter_plugins.container_toolkit import (
    RUNTIMES,
    container_toolkit_sections,
    container_toolkit_state,
)
from gpuprov.ansible.roles.fabricmanager.filter_plugins.fabricmanager import (
    driver_branch,
    fabricmanager_state,
)
from gpuprov.ansible.roles.nvidia_driver.filter_plugins.nvidia_driver import (
    kernel_metapackages,
    nvidia_driver_state,
)
from gpuprov.errors import (
    EXIT_NEEDS_SETUP,
    EXIT_OK,
    EXIT_REFUSED,
    NotFoundError,
    Refused,
    UsageError,
)
from gpuprov.facts.guest import GuestCard, GuestFacts
from gpuprov.plan import driver
from gpuprov.plan.verdict import NEEDS_SETUP, READY, UNSAFE

# The lab's emulated card (QEMU's standard VGA). It is no NVIDIA card, so a lab host names the
# NVIDIA card it stands in for in the inventory variable below, and is matched as that card.
LAB_CARD = "1234:1111"
STAND_IN_VARIABLE = "gpuprov_lab_gpu_stands_in_for"


def _debian_vars(role: str) -> dict:
    """A role's vars/Debian.yml: the paths and package names its state script is given."""
    return yaml.safe_load((resources.files("gpuprov") / "ansible" / "roles" / role / "vars"
                           / "Debian.yml").read_text())


TOOLKIT_PACKAGES = tuple(_debian_vars("container_toolkit")["__container_toolkit_packages"])
FABRICMANAGER_CONFIG = _debian_vars("fabricmanager")["__fabricmanager_config"]
# fabricmanager's packages at the driver's version (either naming); its role installs NVLSM too.
FABRICMANAGER_PACKAGES = ("nvidia-fabricmanager", "libnvidia-nscq")
INSTALLS_ON = ("debian",)  # the families the roles install on (proven on real Debian hosts)
# The roles' variables a plan sets for each host (GuestPlan.host_vars); --vars may set others.
PLANNED_VARIABLES = frozenset({
    "nvidia_driver_version", "nvidia_driver_packages", "nvidia_driver_pins",
    "nvidia_driver_prebuilt_module", "fabricmanager_force", "gpuprov_container_toolkit",
    "container_toolkit_runtimes", "container_toolkit_set_as_default"})


@dataclass(frozen=True)
class GuestRequest:
    """What the user asked for, the same for every host of a run."""

    cuda: str | None = None
    modules: str | None = None  # open | proprietary | None: what the card and branch call for
    runtimes: tuple[str, ...] = ()  # () every runtime installed
    default_runtime: bool = False  # nvidia becomes the runtimes' default
    force_fabricmanager: bool = False

    def check(self) -> None:
        """Bad values fail before any host is read."""
        unknown = [r for r in self.runtimes if r not in RUNTIMES]
        if unknown:
            raise UsageError(f"--runtime {unknown[0]!r} is not a container runtime the toolkit "
                             f"configures", f"choose from {', '.join(RUNTIMES)}")
        if self.modules not in (None, *driver.MODULES):
            raise UsageError(f"--modules must be open or proprietary, not {self.modules!r}")


@dataclass(frozen=True)
class MatchedCard:
    card: GuestCard
    matched_as: str  # the id the driver was matched for (the stand-in's for a lab card)

    @property
    def stand_in(self) -> bool:
        return self.matched_as != self.card.ids

    def describe(self) -> str:
        words = f"{self.card.address} [{self.card.ids}]"
        return words + (f" (STAND-IN for {self.matched_as})" if self.stand_in else "")


def matched_cards(facts: GuestFacts, stand_in: str | None) -> list[MatchedCard]:
    """The node's NVIDIA GPUs; on a lab host without any, its emulated card as the card the
    inventory says it stands in for."""
    nvidia = [MatchedCard(c, c.ids) for c in facts.gpus if c.ids.startswith("10de:")]
    if nvidia or not stand_in:
        return nvidia
    return [MatchedCard(c, stand_in.lower()) for c in facts.gpus if c.ids == LAB_CARD]


def match_driver(data: driver.DriverData, facts: GuestFacts, cards: list[MatchedCard],
                 request: GuestRequest) -> driver.DriverMatch:
    """One driver for every card on the node; a mix of cards no single driver serves is
    refused, naming each card's own."""
    if not cards:
        raise NotFoundError(
            f"no NVIDIA GPU on this host ({len(facts.gpus)} display controller(s): "
            + (", ".join(f"{c.address} [{c.ids}]" for c in facts.gpus) or "none") + ")",
            "check lspci -nn; in a VM, check that the card is passed through (gpuprov vm "
            f"passthrough); a lab host names the card it stands in for in {STAND_IN_VARIABLE}")
    if facts.distro not in data.distros:
        raise Refused(f"{facts.os_name} ({facts.distro}) is not a distro gpuprov knows NVIDIA's "
                      "packages for", f"gpuprov knows {', '.join(data.distros)}")
    matches = {}
    for card in cards:
        if card.matched_as not in matches:
            matches[card.matched_as] = driver.match(data, driver.DriverRequest(
                gpu=card.matched_as, distro=facts.distro, cuda=request.cuda,
                modules=request.modules))
    chosen = {(m.branch, m.modules, tuple(m.headless)) for m in matches.values()}
    if len(chosen) > 1:
        raise Refused("the cards on this host need different drivers: " + "; ".join(
            f"{gpu} ({m.name}): branch {m.branch}, {m.modules} modules"
            for gpu, m in matches.items()), "one node runs one NVIDIA driver: give it cards "
            "of one generation, or pin --modules so one branch serves them all")
    return next(iter(matches.values()))


@dataclass(frozen=True)
class RoleStates:
    """What the roles' state scripts printed on the node, as the roles read it."""

    driver: dict
    fabricmanager: dict
    toolkit: dict | None  # None: no runtime to wire, the toolkit is not part of the stage


@dataclass(frozen=True)
class GuestReport:
    """``gpuprov guest inspect``'s answer for one node."""

    facts: GuestFacts
    cards: tuple[MatchedCard, ...]
    match: driver.DriverMatch
    states: RoleStates
    status: str  # ready / needs setup / unsafe
    missing: tuple[str, ...]  # what setup would do (needs setup)
    refusals: tuple[str, ...]  # why setup will not touch it (unsafe)
    notes: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        return {READY: EXIT_OK, NEEDS_SETUP: EXIT_NEEDS_SETUP, UNSAFE: EXIT_REFUSED}[self.status]

    def to_json(self) -> dict:
        return {
            "status": self.status, "exit_code": self.exit_code, "facts": self.facts.to_json(),
            "cards": [{**c.card.to_json(), "matched_as": c.matched_as, "stand_in": c.stand_in}
                      for c in self.cards],
            "match": self.match.to_json(), "missing": list(self.missing),
            "refusals": list(self.refusals), "notes": list(self.notes),
            "driver": _public(self.states.driver), "fabricmanager":
                _public(self.states.fabricmanager),
            "toolkit": _public(self.states.toolkit) if self.states.toolkit else None,
        }


def _public(state: dict) -> dict:
    return {k: v for k, v in state.items() if k != "problems"}


def driver_packages(facts: GuestFacts) -> dict[str, str]:
    """The installed NVIDIA packages the driver role pins and holds: all but the toolkit's and
    fabricmanager's, which their roles own."""
    theirs = (*TOOLKIT_PACKAGES, *FABRICMANAGER_PACKAGES, "nvlsm")
    return {p: v for p, v in facts.packages.items() if not p.startswith(theirs)}


def read_states(facts: GuestFacts, match: driver.DriverMatch, driver_text: str,
                fabricmanager_text: str, toolkit_text: str,
                request: GuestRequest) -> RoleStates:
    """The roles' readers over their scripts' output, with what is installed as the pins (what
    inspect can know without reading the archive): everything held, the module built and
    loaded for the running kernel, each runtime wired."""
    installed_driver = facts.driver_version or ""
    driver_state = nvidia_driver_state(
        driver_text, installed_driver, facts.kernel, driver_packages(facts),
        match.headless, kernel_metapackages(facts.kernel))
    fabricmanager = fabricmanager_state(fabricmanager_text, {
        p: v for p, v in facts.packages.items()
        if p.startswith(FABRICMANAGER_PACKAGES)})
    runtimes_installed = container_toolkit_sections(toolkit_text).get("runtimes", [])
    toolkit = None
    if request.runtimes or runtimes_installed:
        toolkit = container_toolkit_state(
            toolkit_text, {p: facts.packages.get(p, "") for p in TOOLKIT_PACKAGES},
            list(request.runtimes), request.default_runtime)
    return RoleStates(driver_state, fabricmanager, toolkit)


def judge(facts: GuestFacts, cards: list[MatchedCard], match: driver.DriverMatch,
          states: RoleStates, request: GuestRequest) -> GuestReport:
    """Ready, needs setup (and what), or unsafe (and why not)."""
    refusals, missing, notes = [], [], []
    if facts.run_installer:
        refusals.append(f"a driver from NVIDIA's .run installer is installed "
                        f"({facts.run_installer} exists), and packages laid over it break both: "
                        "run nvidia-uninstall, reboot, then run this again")
    if facts.distro.rstrip("0123456789.") not in INSTALLS_ON:
        refusals.append(f"gpuprov's roles install on Debian (bookworm, trixie); {facts.os_name} "
                        f"is matched (branch {match.branch}: {' '.join(match.headless)}) but not "
                        "installed: install those packages with the distro's tools")
    installed = facts.driver_version
    if installed is None:
        missing.append(f"install driver branch {match.branch} ({match.modules} modules): "
                       + " ".join(match.headless))
    else:
        if driver_branch(installed) != match.branch:
            missing.append(f"driver {installed} is installed, but the card needs branch "
                           f"{match.branch}")
        missing += states.driver["problems"] + states.driver["reboot_because"]
        if states.driver["mok"] == "unknown":
            notes.append(states.driver["mok_note"])
    fabric = states.fabricmanager
    if fabric["nvswitches"] or request.force_fabricmanager or fabric["installed"]:
        missing += fabric["problems"]
    else:
        notes.append("no NVSwitch: fabricmanager is not needed")
    if states.toolkit is None:
        notes.append("no container runtime (docker, containerd, CRI-O) is installed: the "
                     "toolkit is left out; install one, or name one with --runtime")
    else:
        missing += states.toolkit["problems"]
    status = UNSAFE if refusals else NEEDS_SETUP if missing else READY
    return GuestReport(facts, tuple(cards), match, states, status, tuple(missing),
                       tuple(refusals), tuple(notes))


@dataclass(frozen=True)
class DriverPlan:
    """The driver as planned from the distro's archive (``gpuprov driver pins``, ``driver
    build``): its version, every NVIDIA package's pin, the prebuilt module if any."""

    version: str  # 535.261.03
    pins: dict[str, str]
    prebuilt_module: str | None = None  # the tarball on the control node


@dataclass(frozen=True)
class GuestPlan:
    host: str
    report: GuestReport
    driver: DriverPlan
    runtimes: tuple[str, ...]  # the runtimes the toolkit wires; () leaves the toolkit out
    default_runtime: bool
    force_fabricmanager: bool
    extra_vars: dict = field(default_factory=dict)  # --vars: repositories, versions

    @property
    def toolkit(self) -> bool:
        return bool(self.runtimes)

    def host_vars(self) -> dict:
        return {
            **self.extra_vars,
            "nvidia_driver_version": self.driver.version,
            "nvidia_driver_packages": list(self.report.match.headless),
            "nvidia_driver_pins": dict(self.driver.pins),
            "nvidia_driver_prebuilt_module": self.driver.prebuilt_module or "",
            "fabricmanager_force": self.force_fabricmanager,
            "gpuprov_container_toolkit": self.toolkit,
            "container_toolkit_runtimes": list(self.runtimes),
            "container_toolkit_set_as_default": self.default_runtime,
        }

    def reasons(self) -> list[str]:
        match = self.report.match
        lines = [f"driver {self.driver.version} (branch {match.branch}, {match.modules} "
                 f"modules) for " + ", ".join(c.describe() for c in self.report.cards)]
        lines += match.why
        lines.append("module: " + ("prebuilt on this machine, " + self.driver.prebuilt_module
                                   if self.driver.prebuilt_module
                                   else "compiled by DKMS on the host"))
        fabric = self.report.states.fabricmanager
        lines.append("fabricmanager: " + (
            f"{len(fabric['nvswitches'])} NVSwitch(es), in lockstep with the driver"
            if fabric["nvswitches"] else "forced, in lockstep with the driver"
            if self.force_fabricmanager else "not needed (no NVSwitch)"))
        lines.append("container toolkit: " + (
            f"wired to {', '.join(self.runtimes)}"
            + (" as the default runtime" if self.default_runtime else "")
            if self.toolkit else "left out (no container runtime installed)"))
        return lines


def plan_guest_setup(host: str, report: GuestReport, driver_plan: DriverPlan,
                     request: GuestRequest, extra_vars: dict | None = None) -> GuestPlan:
    """The plan for one node, or Refused with the reason when it must not be changed."""
    if report.refusals:
        raise Refused(f"{host}: " + "; ".join(report.refusals))
    toolkit = report.states.toolkit
    runtimes: tuple[str, ...] = ()
    if toolkit is not None:
        absent = [r for r in toolkit["wanted"] if r not in toolkit["runtimes"]]
        if absent:
            raise Refused(f"{host} has no {', '.join(absent)} installed ("
                          + (", ".join(toolkit["runtimes"]) or "no container runtime")
                          + " is): the guest stage wires runtimes, it does not install them",
                          f"install {', '.join(absent)} first, or leave --runtime out to wire "
                          "every runtime installed")
        runtimes = tuple(toolkit["wanted"])
    if report.match.branch != driver_branch(driver_plan.version):
        raise Refused(f"{host}: the archive's driver is {driver_plan.version}, not branch "
                      f"{report.match.branch}", "check the mirror (--mirror)")
    return GuestPlan(host, report, driver_plan, runtimes, request.default_runtime,
                     request.force_fabricmanager, dict(extra_vars or {}))
