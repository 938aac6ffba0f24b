"""Prebuilt NVIDIA kernel modules for fleets (``gpuprov driver build``): what to build, where the
result is kept, and how to read what DKMS and the module say. Pure: no I/O.

A fleet compiles the module once, in a chroot of the target distro, instead of on every node
(about 240-290 CPU-seconds each natively, an hour or more under emulation). DKMS packs the
result as a binaries-only tarball (``dkms mktarball --binaries-only``), which a node loads with
``dkms ldtarball`` and installs with ``dkms install`` in about a second.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from gpuprov.ansible.roles.nvidia_driver.filter_plugins.nvidia_driver import (  # noqa: F401
    DkmsModule,
    parse_dkms_status,
)
from gpuprov.errors import UsageError
from gpuprov.plan.apt_pins import PinPlan, upstream_version

# Debian's kernel ABI names: 6.1.0-50-amd64, 6.12.57+deb13-amd64, 6.1.0-50-cloud-amd64.
DEBIAN_KERNEL = re.compile(r"^\d+\.\d+(?:\.\d+)?(?:-\d+|\+deb\d+)-[a-z0-9][a-z0-9-]*$")
DKMS_SOURCE_PACKAGE = re.compile(r"^nvidia-[a-z0-9-]*kernel-dkms$")
# What the kernel's sign-file appends to a signed module (scripts/sign-file.c, MAGIC_NUMBER).
MODULE_SIGNATURE_MAGIC = b"~Module signature appended~\n"
# Where the fleet's MOK key pair sits inside the build chroot, for the build's length only.
CHROOT_MOK_DIR = "/run/gpuprov-mok"
# sign-file at a path that cannot exist: DKMS then says "modules won't be signed" instead of
# generating a throwaway key of its own (which no node would trust).
_NO_SIGN_FILE = "/nonexistent/gpuprov-builds-unsigned-modules"


@dataclass(frozen=True)
class ModuleBuild:
    """One prebuilt module: a DKMS source package at its pinned version, for one kernel."""

    codename: str  # bookworm
    kernel: str  # 6.1.0-50-amd64
    package: str  # nvidia-open-kernel-dkms
    version: str  # 535.261.03-1~deb12u1, as pinned
    pins: PinPlan  # every NVIDIA package the source package pulls in, at one version
    signing_cert_sha256: str | None  # of the fleet's MOK certificate, when it signs

    @property
    def driver_version(self) -> str:
        return upstream_version(self.version)

    @property
    def headers(self) -> str:
        return f"linux-headers-{self.kernel}"

    @property
    def cache_name(self) -> str:
        """The tarball's file name in the cache: everything that changes its contents."""
        signed = f"_signed-{self.signing_cert_sha256[:16]}" if self.signing_cert_sha256 else ""
        version = urllib.parse.quote(self.version, safe="+~.-")  # an epoch's ':' too
        return f"{self.package}_{version}_{self.codename}_{self.kernel}{signed}.dkms.tar.gz"

    def to_json(self) -> dict:
        return {"package": self.package, "version": self.version,
                "driver_version": self.driver_version, "kernel": self.kernel,
                "codename": self.codename, "headers": self.headers,
                "signed": self.signing_cert_sha256 is not None,
                "signing_cert_sha256": self.signing_cert_sha256}


def check_kernel(kernel: str) -> None:
    if not DEBIAN_KERNEL.match(kernel):
        raise UsageError(f"{kernel!r} is not a Debian kernel release",
                         "pass what `uname -r` prints on the nodes, for example 6.1.0-50-amd64")


def plan_module_build(packages: list[str], pins: PinPlan, codename: str, kernel: str,
                      signing_cert_sha256: str | None = None) -> ModuleBuild:
    """The build of the kernel module among ``packages`` (a matched driver's headless set),
    at the version ``pins`` holds it to."""
    check_kernel(kernel)
    sources = [name for name in packages if DKMS_SOURCE_PACKAGE.match(name)]
    if len(sources) != 1:
        raise UsageError(f"the matched packages name {len(sources)} DKMS module packages "
                         f"({' '.join(packages)}); a build needs exactly one")
    [package] = sources
    if package not in pins.pins:
        raise UsageError(f"the pin plan does not hold {package}",
                         "plan the pins from the same packages")
    return ModuleBuild(codename, kernel, package, pins.pins[package], pins,
                       signing_cert_sha256)


def signing_conf(signing: bool) -> str:
    """DKMS's framework.conf.d file for the build chroot: sign with the fleet's key pair (in
    CHROOT_MOK_DIR), or explicitly not at all."""
    header = "# gpuprov driver build: "
    if not signing:
        return f"{header}no fleet key was given, so modules stay unsigned.\n" \
               f'sign_file="{_NO_SIGN_FILE}"\n'
    return (f"{header}sign with the fleet's MOK key pair.\n"
            f'mok_signing_key="{CHROOT_MOK_DIR}/mok.key"\n'
            f'mok_certificate="{CHROOT_MOK_DIR}/mok.pub"\n')


def dkms_module_name(status: list[DkmsModule], build: ModuleBuild) -> str:
    """The name ``build.package`` registered its module under with DKMS (nvidia-current,
    nvidia-current-open, nvidia-tesla-535, ...), from ``dkms status`` after installing it."""
    names = {module.name for module in status if module.version == build.driver_version}
    if len(names) != 1:
        raise ValueError(f"after installing {build.package}, dkms lists {len(names)} modules "
                         f"at {build.driver_version} ({', '.join(sorted(names)) or 'none'})")
    return names.pop()


def is_signed(module: bytes) -> bool:
    """Whether a kernel module file carries an appended signature."""
    return module.endswith(MODULE_SIGNATURE_MAGIC)
