"""What ``gpuprov driver pins`` and ``driver build`` do on this machine: read the archive a host
would use, plan the pins (gpuprov.plan.apt_pins), and build a prebuilt kernel module in a chroot
of the target distro (gpuprov.plan.driver_build), cached by everything that shapes it.

The build, step by step (its log is ``<cache>/driver-build/build.log``):

1. a base root file system of the distro with DKMS and its compiler (debootstrap, once per
   distro and mirror);
2. a throwaway copy of it, given the host's apt sources, the pins of every NVIDIA package and
   DKMS's signing settings;
3. the running kernel's headers and the DKMS source package at its pinned version, installed;
4. ``dkms build`` for the target kernel, then ``dkms mktarball --binaries-only``;
5. the tarball checked (every module for that kernel, signed as asked) and moved into the cache.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpuprov.errors import EnvironmentProblem, GpuprovError, NotFoundError, UsageError
from gpuprov.lab.locking import exclusive
from gpuprov.plan import apt_pins, driver_build
from gpuprov.transport.apt_archive import COMPONENTS, PrivateApt, redact
from gpuprov.transport.chroot import BuildLog, chroot, remove_tree

# What every build needs besides the kernel's headers: DKMS (which pulls in the compiler,
# make and kmod) and openssl's library for sign-file.
BASE_PACKAGES = ("dkms", "libssl3", "ca-certificates")
_PREFERENCES = "etc/apt/preferences.d/gpuprov-nvidia.pref"
_SIGNING_CONF = "etc/dkms/framework.conf.d/gpuprov-signing.conf"

Report = Callable[[str], None]


class BuildFailed(GpuprovError):
    """A module build step failed; the build log says why."""


def debian_sources(mirror: str, security_mirror: str, codename: str) -> list[str]:
    """The sources.list lines of a Debian host: release, -updates and (when given) -security,
    with every component the NVIDIA packages live in."""
    sources = [f"deb {mirror} {codename} {COMPONENTS}",
               f"deb {mirror} {codename}-updates {COMPONENTS}"]
    if security_mirror:
        sources.append(f"deb {security_mirror} {codename}-security {COMPONENTS}")
    return sources


def read_archive(sources: list[str], work: Path) -> PrivateApt:
    """The archive behind ``sources``, fetched into ``work``."""
    archive = PrivateApt(work, sources)
    archive.update()
    return archive


def plan_pins(archive: PrivateApt, packages: list[str]) -> apt_pins.PinPlan:
    return apt_pins.plan_pins(packages, apt_pins.parse_records(archive.records()))


def require_headers(archive: PrivateApt, kernel: str) -> None:
    """Refuse a kernel whose headers the archive does not have, before building anything."""
    headers = f"linux-headers-{kernel}"
    if archive.run("show", headers, check=False).returncode != 0:
        raise NotFoundError(f"{headers} is not in these apt sources, so no module can be built "
                            f"for kernel {kernel}",
                            "Debian's archive keeps only current kernels: upgrade the nodes' "
                            "kernel, or pass --mirror with a snapshot that has it")


def plan_from_archive(sources: list[str], packages: list[str], *, kernel: str | None = None,
                      codename: str = "", mok: MokPair | None = None
                      ) -> tuple[apt_pins.PinPlan, driver_build.ModuleBuild | None]:
    """The pins of ``packages`` from the archive behind ``sources`` and, for ``kernel``, the
    build of their module (refused when the archive has no headers for that kernel)."""
    with tempfile.TemporaryDirectory(prefix="gpuprov-apt-") as scratch:
        archive = read_archive(sources, Path(scratch))
        pins = plan_pins(archive, packages)
        if kernel is None:
            return pins, None
        require_headers(archive, kernel)
    return pins, driver_build.plan_module_build(packages, pins, codename, kernel,
                                                mok.cert_sha256() if mok else None)


@dataclass(frozen=True)
class MokPair:
    """The fleet's Secure Boot module signing key and its certificate (files we only read)."""

    key: Path
    cert: Path

    @classmethod
    def from_options(cls, key: Path | None, cert: Path | None) -> MokPair | None:
        if key is None and cert is None:
            return None
        if key is None or cert is None:
            raise UsageError("signing needs both --mok-key and --mok-cert",
                             "give the private key and its certificate (DER or PEM), or neither")
        for path in (key, cert):
            if not path.is_file():
                raise UsageError(f"{path} is not a readable file")
        return cls(key, cert)

    def cert_sha256(self) -> str:
        return hashlib.sha256(self.cert.read_bytes()).hexdigest()


@dataclass(frozen=True)
class BuiltModule:
    tarball: Path
    dkms_name: str  # nvidia-current-open: what ``dkms ldtarball`` registers it as
    modules: list[str]  # the .ko files in it
    signed: bool
    cached: bool  # found in the cache, not built now


class ModuleBuilder:
    """Builds DKMS binaries-only tarballs under ``cache`` (``<cache>/driver-build``)."""

    def __init__(self, cache: Path, mirror: str, report: Report) -> None:
        self.root = cache / "driver-build"
        self.mirror = mirror
        self.report = report
        self.log = self.root / "build.log"
        self._log = BuildLog(self.log, BuildFailed, "module build",
                             "run scripts/setup.sh (it installs debootstrap)")

    def tarball(self, build: driver_build.ModuleBuild) -> Path:
        return self.root / build.cache_name

    def build(self, build: driver_build.ModuleBuild, sources: list[str],
              mok: MokPair | None) -> BuiltModule:
        if os.geteuid() != 0:
            raise EnvironmentProblem("building a module needs root (debootstrap, chroot, mount)",
                                     "run it as root, for example with sudo")
        with exclusive(self.root, lambda: self.report("waiting for another module build to "
                                                      "finish")):
            # A build that was killed leaves its chroot, and with it a copy of the fleet's key:
            # under the lock no other build uses one, so every leftover goes now.
            for leftover in self.root.glob("work-*"):
                remove_tree(leftover)
            target = self.tarball(build)
            if target.exists():
                return _check_tarball(target, build, cached=True)
            base = self._base(build.codename)
            work = Path(tempfile.mkdtemp(prefix="work-", dir=self.root))
            try:
                self._build_in(work, base, build, sources, mok)
                [made] = (work / "var/lib/dkms").glob("*/*/tarball/*.tar.gz")
                built = _check_tarball(made, build, cached=False)
                shutil.move(made, target)
            finally:
                remove_tree(work)
        return BuiltModule(target, built.dkms_name, built.modules, built.signed, False)

    def _base(self, codename: str) -> Path:
        recipe = f"{codename} {self.mirror} {' '.join(BASE_PACKAGES)}"
        base = self.root / f"base-{codename}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
        if not base.exists():
            partial = base.with_name(base.name + ".partial")
            remove_tree(partial)
            self.report(f"debootstrap {codename} with DKMS from {redact(self.mirror)} (about "
                        "2 minutes, once)")
            self._log.run(["debootstrap", "--variant=minbase",
                           f"--include={','.join(BASE_PACKAGES)}", codename, str(partial),
                           self.mirror])
            (partial / "etc/apt/sources.list").write_text("")  # each build brings its own
            partial.rename(base)
        return base

    def _build_in(self, work: Path, base: Path, build: driver_build.ModuleBuild,
                  sources: list[str], mok: MokPair | None) -> None:
        self._log.run(["cp", "-a", "--reflink=auto", f"{base}/.", str(work)])
        (work / "etc/apt/sources.list").write_text("".join(f"{line}\n" for line in sources))
        (work / _PREFERENCES).write_text(build.pins.preferences(
            f"gpuprov driver build: every NVIDIA package at {build.driver_version}."))
        (work / _SIGNING_CONF).parent.mkdir(parents=True, exist_ok=True)
        (work / _SIGNING_CONF).write_text(driver_build.signing_conf(mok is not None))
        if mok:
            keys = work / driver_build.CHROOT_MOK_DIR.lstrip("/")
            keys.mkdir(mode=0o700, parents=True)
            for source, name in ((mok.key, "mok.key"), (mok.cert, "mok.pub")):
                shutil.copyfile(source, keys / name)
                (keys / name).chmod(0o600)
        with chroot(work, self._log) as run:
            self.report(f"installing {build.headers} and {build.package} {build.version}")
            run(["apt-get", "update"])
            run(["apt-get", "install", "--yes", "--no-install-recommends", build.headers])
            # Its postinst may build for the kernel already; `dkms build` then says so and skips.
            run(["apt-get", "install", "--yes", "--no-install-recommends",
                 f"{build.package}={build.version}"])
            try:
                name = driver_build.dkms_module_name(_dkms_status(work, run), build)
            except ValueError as unexpected:
                raise BuildFailed(str(unexpected), f"see the build log: {self.log}") from None
            self.report(f"compiling {name} {build.driver_version} for {build.kernel} (several "
                        "minutes)")
            run(["dkms", "build", "-m", name, "-v", build.driver_version, "-k", build.kernel])
            run(["dkms", "mktarball", "-m", name, "-v", build.driver_version,
                 "-k", build.kernel, "--binaries-only"])


def _dkms_status(work: Path, run) -> list[driver_build.DkmsModule]:
    out = work / "tmp/gpuprov-dkms-status"
    run(["sh", "-c", f"dkms status > /{out.relative_to(work)}"])
    return driver_build.parse_dkms_status(out.read_text())


_MODULE_FILE = re.compile(r"^dkms_main_tree/(?P<kernel>[^/]+)/(?P<arch>[^/]+)/module/"
                          r"(?P<file>[^/]+\.ko(?:\.xz|\.gz)?)$")
_VERMAGIC = re.compile(rb"vermagic=([^\0]*)\0")


def _check_tarball(path: Path, build: driver_build.ModuleBuild, cached: bool) -> BuiltModule:
    """Every module in the tarball is for the build's kernel and signed as the build asked."""
    modules, signed, dkms_name = [], [], ""
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix("./")
            if name == "dkms_binaries_only/PACKAGE_NAME":
                dkms_name = tar.extractfile(member).read().decode().strip()
            if not (match := _MODULE_FILE.search(name)):
                continue
            if match["kernel"] != build.kernel:
                raise BuildFailed(f"{path.name} holds modules for {match['kernel']}, not "
                                  f"{build.kernel}")
            data = _decompressed(match["file"], tar.extractfile(member).read())
            vermagic = _VERMAGIC.search(data)
            if not vermagic or not vermagic[1].decode().startswith(build.kernel + " "):
                raise BuildFailed(f"{match['file']} in {path.name} was not built for "
                                  f"{build.kernel}")
            modules.append(match["file"])
            signed.append(driver_build.is_signed(data))
    if not modules or not dkms_name:
        raise BuildFailed(f"{path.name} is not a DKMS binaries-only tarball with modules")
    want = build.signing_cert_sha256 is not None
    if any(s != want for s in signed):
        raise BuildFailed(f"{path.name}: modules are {'not ' if want else ''}signed, against "
                          "what the build asked", "see the build log for DKMS's signing lines")
    return BuiltModule(path, dkms_name, sorted(modules), want, cached)


def _decompressed(name: str, data: bytes) -> bytes:
    if name.endswith(".xz"):
        return lzma.decompress(data)
    if name.endswith(".gz"):
        return gzip.decompress(data)
    return data
