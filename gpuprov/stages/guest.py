"""``gpuprov guest inspect`` and ``guest setup``: the guest stage (NVIDIA driver, fabricmanager,
container toolkit) on a GPU node or a passthrough VM.

Inspect is one SSH connection: ``gpuprov/facts/guest_probe.sh`` (distro, kernel, cards, NVIDIA
packages), then the three roles' own state scripts, read by the roles' own filters
(``gpuprov.plan.guest``). Setup is a stage of ``gpuprov.stages.engine``: inspect, plan the driver
from the distro's archive (and build its module here with ``--prebuilt``), then
``playbooks/guest_setup.yml`` (roles nvidia_driver, fabricmanager, container_toolkit), then
inspect again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from gpuprov import drivers
from gpuprov import inventory as inventory_
from gpuprov.errors import GpuprovError, UsageError
from gpuprov.facts.guest import parse_guest_facts
from gpuprov.plan import guest
from gpuprov.plan.driver import DriverData
from gpuprov.stages import inspect
from gpuprov.transport.ansible import CONTENT

PLAYBOOK = "guest_setup.yml"
_ROLE_SCRIPTS = {
    "driver": "nvidia_driver/files/nvidia-driver-state.sh",
    "fabricmanager": "fabricmanager/files/fabricmanager-state.sh",
    "toolkit": "container_toolkit/files/container-toolkit-state.sh",
}


def _script(name: str) -> str:
    return (CONTENT / "roles" / _ROLE_SCRIPTS[name]).read_text()


def _guest_probe() -> str:
    return resources.files("gpuprov.facts").joinpath("guest_probe.sh").read_text()


def run(host: str, request: guest.GuestRequest, *, inventory: Path | None = None,
        data: DriverData | None = None) -> guest.GuestReport:
    """Inspect one node: one SSH connection, four read-only scripts."""
    data = data or DriverData.load()
    target = inventory_.resolve(host, inventory)
    stand_in = inventory_.host_vars(host, inventory).get(guest.STAND_IN_VARIABLE)
    with inspect.session(host, target) as run_script:
        facts = parse_guest_facts(run_script(_guest_probe()))
        cards = guest.matched_cards(facts, stand_in)
        match = guest.match_driver(data, facts, cards, request)
        driver_packages = sorted({*guest.driver_packages(facts), *match.headless,
                                  *guest.kernel_metapackages(facts.kernel)})
        texts = (
            run_script(_script("driver"), facts.kernel, facts.driver_version or "none",
                       *driver_packages),
            run_script(_script("fabricmanager"), facts.kernel, guest.FABRICMANAGER_CONFIG),
            run_script(_script("toolkit"), *guest.TOOLKIT_PACKAGES),
        )
    states = guest.read_states(facts, match, *texts, request)
    return guest.judge(facts, cards, match, states, request)


def run_many(hosts: Sequence[str], request: guest.GuestRequest, *,
             inventory: Path | None = None, forks: int = 16
             ) -> list[guest.GuestReport | GpuprovError]:
    """``run`` on every host, ``forks`` at once; each host's report or error, in order."""
    from gpuprov.stages.engine import in_parallel

    data = DriverData.load()

    def one(host: str) -> guest.GuestReport | GpuprovError:
        try:
            return run(host, request, inventory=inventory, data=data)
        except GpuprovError as error:
            return error

    return in_parallel(one, hosts, forks)


@dataclass(frozen=True)
class DriverSource:
    """Where the driver comes from: the Debian mirrors the nodes use, and whether its module is
    built once here (``gpuprov driver build``) instead of by DKMS on every node."""

    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"
    prebuilt: bool = False
    mok: drivers.MokPair | None = None


@dataclass
class GuestSetup:
    """The guest stage on the engine: inspect, plan (the archive read once per distro and
    kernel for the whole fleet), the playbook, inspect again."""

    request: guest.GuestRequest
    source: DriverSource = field(default_factory=DriverSource)
    extra_vars: dict = field(default_factory=dict)
    report: Callable[[str, str], None] = lambda host, message: None
    playbook: str = PLAYBOOK
    _data: DriverData = field(default_factory=DriverData.load)
    _plans: dict = field(default_factory=dict)  # (codename, kernel, packages) -> DriverPlan
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def gather(self, host: str, inventory: Path) -> tuple[guest.GuestReport, guest.DriverPlan]:
        found = run(host, self.request, inventory=inventory, data=self._data)
        if found.refusals:  # nothing to plan for: the plan refuses it
            return found, guest.DriverPlan(found.facts.driver_version or "", {})
        return found, self._driver_plan(host, found)

    def _driver_plan(self, host: str, found: guest.GuestReport) -> guest.DriverPlan:
        codename = found.facts.codename or ""
        kernel = found.facts.kernel if self.source.prebuilt else None
        key = (codename, kernel, tuple(found.match.headless))
        with self._lock:  # one archive read, one build, for every host that shares them
            if key not in self._plans:
                self.report(host, f"reading Debian's {codename} archive for the driver's pins")
                sources = drivers.debian_sources(self.source.mirror, self.source.security_mirror,
                                                 codename)
                pins, build = drivers.plan_from_archive(
                    sources, found.match.headless, kernel=kernel, codename=codename,
                    mok=self.source.mok)
                tarball = None
                if build is not None:
                    from gpuprov.lab.image import default_cache_dir

                    builder = drivers.ModuleBuilder(default_cache_dir(), self.source.mirror,
                                                    lambda message: self.report(host, message))
                    built = builder.build(build, sources, self.source.mok)
                    self.report(host, f"{build.package} {build.version} for {kernel}: "
                                + ("found in the cache" if built.cached else "built")
                                + f", {built.tarball}")
                    tarball = str(built.tarball)
                self._plans[key] = guest.DriverPlan(pins.driver_version, pins.pins, tarball)
            return self._plans[key]

    def plan(self, host: str, gathered: tuple[guest.GuestReport, guest.DriverPlan]
             ) -> guest.GuestPlan:
        found, driver_plan = gathered
        return guest.plan_guest_setup(host, found, driver_plan, self.request, self.extra_vars)

    def host_vars(self, plan: guest.GuestPlan) -> dict:
        return plan.host_vars()

    def has_work(self, plan: guest.GuestPlan) -> bool:
        # A ready node still gets a preview: its pins or runtime files may have drifted.
        return plan.report.status != guest.READY

    def unchanged(self, host: str, plan: guest.GuestPlan) -> str:
        if plan.report.status != guest.READY:
            raise GpuprovError(
                f"{host} needs nothing changed, yet is not ready: "
                + "; ".join(plan.report.missing),
                f"reboot {host} if the driver is waiting for one, then check with: gpuprov "
                f"guest inspect {host}")
        return (f"{host} is ready: driver {plan.driver.version} pinned and held, "
                + "; ".join(plan.report.notes or ("every part in place",)))

    def failed_unchanged_hint(self, host: str) -> str:
        return f"gpuprov guest inspect {host} shows what is missing"

    def verify(self, host: str, inventory: Path, plan: guest.GuestPlan) -> guest.GuestReport:
        """Inspect again, independently of the playbook: ready, at the planned driver."""
        after = run(host, self.request, inventory=inventory, data=self._data)
        problems = list(after.missing) + list(after.refusals)
        if after.facts.driver_version != plan.driver.version:
            problems.append(f"the driver is {after.facts.driver_version or 'not installed'}, "
                            f"not {plan.driver.version}")
        if problems:
            raise GpuprovError(f"{host} is not ready after guest setup: " + "; ".join(problems),
                               f"see gpuprov guest inspect {host}")
        return after


def read_vars(path: Path | None) -> dict:
    """``--vars FILE``: the roles' variables (repositories, keys, versions) as YAML."""
    if path is None:
        return {}
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as error:
        raise UsageError(f"cannot read --vars {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise UsageError(f"--vars {path} is not YAML: {error}") from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict) or not all(isinstance(k, str) for k in loaded):
        raise UsageError(f"--vars {path} must be a mapping of variable names to values",
                         "for example: container_toolkit_version: 1.17.8")
    reserved = sorted(k for k in loaded if k in guest.PLANNED_VARIABLES)
    if reserved:
        raise UsageError(f"--vars {path} sets {', '.join(reserved)}, which guest setup plans "
                         "itself", "use --cuda, --modules, --runtime, --default-runtime or "
                         "--force-fabricmanager instead")
    return loaded
