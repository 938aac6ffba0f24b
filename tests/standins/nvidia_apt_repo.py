"""STAND-IN: signed apt repositories with NVIDIA's packages that these machines cannot reach.

NVIDIA's CUDA repository (fabricmanager, NSCQ) and its libnvidia-container repository (the
container toolkit) cannot be reached here, and Debian carries neither. These packages stand in
for them so that apt, the pins, the holds and the version lockstep the roles rely on are real:

- NVIDIA's package names and versions (with NVIDIA's ``-1`` revision) and the relations its
  packages declare: fabricmanager per driver branch (``nvidia-fabricmanager-535``,
  ``libnvidia-nscq-535``; the 580 branch drops the suffix); the toolkit's four packages, where
  ``nvidia-container-toolkit`` needs ``nvidia-container-toolkit-base`` at its own version, so
  that pinning one of them alone is unsatisfiable, as with NVIDIA's;
- the real files' paths: ``nv-fabricmanager``, its unit and ``fabricmanager.cfg``; ``nvidia-ctk``,
  ``nvidia-container-runtime`` and its ``config.toml``;
- the programs (``files/``) are stand-ins that do only what the real ones do in the situations
  the tests reach, and say they are stand-ins: ``nv-fabricmanager`` exits 1 with
  NV_WARN_NOTHING_TO_DO when the driver lists no NVSwitch, or when the loaded driver is another
  version; ``nvidia-ctk runtime configure`` writes the runtime entry NVIDIA's 1.17 writes for
  docker, containerd and CRI-O; ``nvidia-container-runtime`` hands every call to runc, as the
  real shim does for a container that asks for no GPU.

Each repository is flat (suite ``/``, as NVIDIA's are), indexed by apt-ftparchive and signed
with a key made for it (gpg), so apt checks it as it checks NVIDIA's:

    python -m tests.standins.nvidia_apt_repo OUT fabricmanager --version 535.261.03 535.309.01
    python -m tests.standins.nvidia_apt_repo OUT container-toolkit --version 1.17.7 1.17.8

writes OUT/*.deb, Packages, Release, InRelease, and the armored key as OUT-key.asc (beside the
repository, as a key is fetched apart from the repository it signs).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path

FILES = Path(__file__).parent / "files"
MAINTAINER = "gpuprov tests <stand-in for cudatools@nvidia.com>"

_FABRICMANAGER_UNIT = """\
[Unit]
Description=NVIDIA fabric manager service (stand-in)
After=network-online.target
Requires=network-online.target

[Service]
User=root
PrivateTmp=false
Type=forking
ExecStart=/usr/bin/nv-fabricmanager -c /usr/share/nvidia/nvswitch/fabricmanager.cfg
LimitCORE=infinity

[Install]
WantedBy=multi-user.target
"""

_FABRICMANAGER_CONFIG = """\
# STAND-IN of fabricmanager.cfg: the keys gpuprov reads or sets, with NVIDIA's defaults.
LOG_LEVEL=4
LOG_FILE_NAME=/var/log/fabricmanager.log
DAEMONIZE=1
BIND_INTERFACE_IP=127.0.0.1
STARTING_TCP_PORT=16000
FABRIC_MODE=0
FABRIC_MODE_RESTART=0
STATE_FILE_NAME=/tmp/fabricmanager.state
"""

_RUNTIME_CONFIG = """\
# STAND-IN of /etc/nvidia-container-runtime/config.toml (NVIDIA's defaults, abridged).
[nvidia-container-cli]
environment = []
ldconfig = "@/sbin/ldconfig"
load-kmods = true

[nvidia-container-runtime]
log-level = "info"
mode = "auto"
runtimes = ["docker-runc", "runc", "crun"]
"""


def _program(name: str, version: str) -> str:
    return (FILES / name).read_text().replace("@VERSION@", version)


def _deb(out: Path, name: str, version: str, files: dict[str, tuple[str, int]],
         description: str, relations: str = "") -> None:
    """One .deb: ``files`` maps each absolute path to (content, mode)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # the package's "./": a temporary directory's 0700 is no root's mode
        for path, (content, mode) in files.items():
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            target.chmod(mode)
        (root / "DEBIAN").mkdir()
        (root / "DEBIAN/control").write_text(textwrap.dedent(f"""\
            Package: {name}
            Version: {version}
            Architecture: amd64
            Maintainer: {MAINTAINER}
            Section: devel
            Priority: optional
            """) + relations + f"Description: STAND-IN for NVIDIA's {description}\n"
            " Built by gpuprov's tests (tests/standins); not NVIDIA's software.\n")
        subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root),
                        str(out / f"{name}_{version}_amd64.deb")], check=True,
                       capture_output=True)


def fabricmanager_packages(out: Path, branch: int, upstream: str) -> None:
    suffix = "" if branch >= 580 else f"-{branch}"
    version = f"{upstream}-1"
    _deb(out, f"nvidia-fabricmanager{suffix}", version, {
        "/usr/bin/nv-fabricmanager": (_program("nv-fabricmanager.sh", upstream), 0o755),
        "/lib/systemd/system/nvidia-fabricmanager.service": (_FABRICMANAGER_UNIT, 0o644),
        "/usr/share/nvidia/nvswitch/fabricmanager.cfg": (_FABRICMANAGER_CONFIG, 0o644),
    }, f"Fabric Manager {upstream} for NVSwitch systems",
        f"Provides: nvidia-fabricmanager (= {version})\n" if suffix else "")
    _deb(out, f"libnvidia-nscq{suffix}", version, {
        f"/usr/lib/x86_64-linux-gnu/libnvidia-nscq.so.{upstream}":
            (f"STAND-IN for NVIDIA's NSCQ library {upstream}\n", 0o644),
    }, f"NSCQ (NVSwitch configuration and query) library {upstream}")


def container_toolkit_packages(out: Path, upstream: str) -> None:
    version = f"{upstream}-1"
    _deb(out, "libnvidia-container1", version, {
        f"/usr/lib/x86_64-linux-gnu/libnvidia-container.so.{upstream}":
            (f"STAND-IN for NVIDIA's libnvidia-container {upstream}\n", 0o644),
    }, f"libnvidia-container {upstream}, the NVIDIA container runtime library")
    _deb(out, "libnvidia-container-tools", version, {
        "/usr/bin/nvidia-container-cli":
            (f"#!/bin/sh\necho 'cli-version: {upstream} (gpuprov stand-in)'\n", 0o755),
    }, f"nvidia-container-cli {upstream}",
        f"Depends: libnvidia-container1 (>= {version}), libnvidia-container1 (<< 2.0.0)\n")
    _deb(out, "nvidia-container-toolkit-base", version, {
        "/usr/bin/nvidia-ctk": (_program("nvidia-ctk.py", upstream), 0o755),
        "/usr/bin/nvidia-container-runtime":
            (_program("nvidia-container-runtime.sh", upstream), 0o755),
        "/etc/nvidia-container-runtime/config.toml": (_RUNTIME_CONFIG, 0o644),
    }, f"NVIDIA Container Toolkit base {upstream} (nvidia-ctk, nvidia-container-runtime)",
        "Depends: python3\n"  # the stand-in nvidia-ctk is Python; NVIDIA's is Go
        "Breaks: nvidia-container-toolkit (<< 1.11.0~rc.1)\n"
        "Replaces: nvidia-container-toolkit (<< 1.11.0~rc.1)\n")
    _deb(out, "nvidia-container-toolkit", version, {
        "/usr/bin/nvidia-container-runtime-hook":
            (f"#!/bin/sh\necho 'STAND-IN nvidia-container-runtime-hook {upstream}' >&2\n"
             "exit 1\n", 0o755),
    }, f"NVIDIA Container Toolkit {upstream}",
        f"Depends: nvidia-container-toolkit-base (= {version}), "
        f"libnvidia-container-tools (>= {version}), libnvidia-container-tools (<< 2.0.0)\n")


def index_and_sign(out: Path, origin: str) -> Path:
    """Packages, Release and InRelease for the flat repository in ``out``; returns its key."""
    def ftparchive(*args: str) -> str:
        return subprocess.run(["apt-ftparchive", *args], cwd=out, check=True,
                              capture_output=True, text=True).stdout

    (out / "Packages").write_text(ftparchive("packages", "."))
    (out / "Release").write_text(ftparchive(
        "-o", f"APT::FTPArchive::Release::Origin=gpuprov stand-in for {origin}",
        "-o", "APT::FTPArchive::Release::Label=gpuprov stand-in", "release", "."))
    key = out.parent / f"{out.name}-key.asc"
    with tempfile.TemporaryDirectory() as gnupg_home:
        gpg = ["gpg", "--homedir", gnupg_home, "--batch", "--quiet", "--pinentry-mode",
               "loopback", "--passphrase", ""]
        subprocess.run([*gpg, "--quick-generate-key", f"gpuprov stand-in {origin}",
                        "ed25519", "sign", "never"], check=True, capture_output=True)
        subprocess.run([*gpg, "--clearsign", "--output", str(out / "InRelease"),
                        str(out / "Release")], check=True, capture_output=True)
        key.write_text(subprocess.run([*gpg, "--armor", "--export"], check=True,
                                      capture_output=True, text=True).stdout)
    return key


def build(out: Path, family: str, versions: list[str], branch: int | None = None) -> Path:
    """The repository in ``out`` (made anew); returns the path of its armored signing key."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for upstream in versions:
        if family == "fabricmanager":
            fabricmanager_packages(out, branch or int(upstream.split(".")[0]), upstream)
        else:
            container_toolkit_packages(out, upstream)
    return index_and_sign(out, {"fabricmanager": "NVIDIA CUDA",
                                "container-toolkit": "NVIDIA libnvidia-container"}[family])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("family", choices=["fabricmanager", "container-toolkit"])
    parser.add_argument("--branch", type=int, help="the driver branch (fabricmanager)")
    parser.add_argument("--version", nargs="+", required=True, dest="versions")
    args = parser.parse_args()
    print(build(args.out, args.family, args.versions, args.branch))


if __name__ == "__main__":
    main()
