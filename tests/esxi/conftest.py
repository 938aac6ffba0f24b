"""vcsim for the ESXi backend's tests: VMware's vSphere API simulator (govmomi's ``simulator``
package from Debian's archive) served by the project's own small Go main (tests/vcsim/main.go),
plus gpuprov's passthrough extension of it (tests/vcsim/passthrough_ext.go): NVIDIA cards among
the host's PCI devices, a working HostPciPassthruSystem with reboot-needed semantics, and
ESXi's power-on checks for passthrough VMs. Stock vcsim models none of these.

The binary is built once per source hash, in GOPATH mode, into the gpuprov cache
($GPUPROV_CACHE_DIR or ~/.cache/gpuprov); each test gets a fresh simulator on a free port.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest

SOURCES = Path(__file__).resolve().parents[1] / "vcsim"
GOPATH = "/usr/share/gocode"  # Debian's golang-github-vmware-govmomi-dev installs here


def _cache_dir() -> Path:
    if env := os.environ.get("GPUPROV_CACHE_DIR"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpuprov"


def _build() -> Path:
    go = shutil.which("go")
    if go is None or not (Path(GOPATH) / "src/github.com/vmware/govmomi/simulator").is_dir():
        pytest.fail("vcsim needs golang-go and golang-github-vmware-govmomi-dev: run "
                    "scripts/setup.sh", pytrace=False)
    digest = hashlib.sha256(subprocess.run([go, "version"], capture_output=True, text=True,
                                           check=True).stdout.encode())
    for source in sorted(SOURCES.glob("*.go")):
        digest.update(source.name.encode() + source.read_bytes())
    cache = _cache_dir()
    binary = cache / f"gpuprov-vcsim-{digest.hexdigest()[:16]}"
    if binary.exists():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".vcsim.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the others reuse it
        if not binary.exists():
            partial = binary.with_suffix(".partial")
            env = {**os.environ, "GO111MODULE": "off", "GOPATH": GOPATH,
                   "GOCACHE": str(cache / "go-build"), "GOFLAGS": ""}
            built = subprocess.run([go, "build", "-o", str(partial), "."], cwd=SOURCES,
                                   env=env, capture_output=True, text=True, check=False)
            if built.returncode != 0:
                pytest.fail(f"building vcsim failed:\n{built.stderr}", pytrace=False)
            partial.rename(binary)
    return binary


@pytest.fixture(scope="session")
def vcsim_binary() -> Path:
    return _build()


@dataclass
class Vcsim:
    model: str
    url: str
    cert_pem: str
    sha1: str
    sha256: str
    user: str
    password: str
    workdir: Path

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname

    @property
    def port(self) -> int:
        return urlparse(self.url).port

    def inventory(self, name: str = "esx1", **variables) -> Path:
        """An inventory naming this simulator ``name``; the CA file trusts its certificate."""
        ca_file = self.workdir / "ca.pem"
        ca_file.write_text(self.cert_pem)
        values = {"vsphere_host": self.host, "vsphere_port": self.port,
                  "vsphere_user": self.user, "vsphere_password": self.password,
                  "vsphere_ca_file": str(ca_file), **variables}
        lines = [f"        {k}: {json.dumps(v)}" for k, v in values.items() if v is not None]
        path = self.workdir / "inventory.yml"
        path.write_text("all:\n  hosts:\n" + f"    {name}:\n" + "\n".join(lines) + "\n")
        return path

    def connect(self):
        """An independent pyVmomi session, for setting scenes up and reading results back."""
        from pyVim.connect import SmartConnect

        context = ssl.create_default_context(cadata=self.cert_pem)
        return SmartConnect(host=self.host, port=self.port, user=self.user, pwd=self.password,
                            sslContext=context)


def _start(binary: Path, model: str, workdir: Path):
    info = workdir / "vcsim.json"
    user, password = "gpuprov-test", "pw-" + secrets.token_urlsafe(12)
    log = open(workdir / "vcsim.log", "w")  # noqa: SIM115 - closed with the process below
    process = subprocess.Popen([str(binary), "-model", model, "-info", str(info)],
                               env={**os.environ, "VCSIM_USER": user,
                                    "VCSIM_PASSWORD": password},
                               stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    deadline = time.monotonic() + 20
    while not info.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"vcsim did not start:\n{(workdir / 'vcsim.log').read_text()}",
                        pytrace=False)
        time.sleep(0.05)
    data = json.loads(info.read_text())
    sim = Vcsim(model=model, url=data["url"], cert_pem=data["cert_pem"],
                sha1=data["thumbprint_sha1"], sha256=data["thumbprint_sha256"], user=user,
                password=password, workdir=workdir)
    return process, log, sim


@pytest.fixture(params=["esx", "vpx"], ids=["standalone-esxi", "vcenter"])
def vcsim(request, vcsim_binary, tmp_path) -> Vcsim:
    """A fresh simulator per test: a standalone ESXi host, or a vCenter (DC0 with cluster
    DC0_C0 of hosts DC0_C0_H0..H2 and standalone host DC0_H0)."""
    process, log, sim = _start(vcsim_binary, request.param, tmp_path)
    try:
        yield sim
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
