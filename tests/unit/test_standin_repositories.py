"""The STAND-IN NVIDIA repositories (tests/standins) the molecule scenario serves to a lab host:
signed as apt checks them, with NVIDIA's package names, versions and relations, and a stand-in
nvidia-ctk that writes valid configurations for Debian's own runtimes, the same on a second run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.standins.nvidia_apt_repo import build

FILES = Path(__file__).resolve().parents[1] / "standins/files"
# /etc/containerd/config.toml as Debian 12's containerd 1.6.20~ds1-1+deb12u3 ships it.
DEBIAN_CONTAINERD = """\
version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
"""


def _records(repository: Path) -> list[dict[str, str]]:
    records = []
    for block in (repository / "Packages").read_text().strip().split("\n\n"):
        records.append(dict(line.split(": ", 1) for line in block.splitlines()
                            if ": " in line and not line.startswith(" ")))
    return records


@pytest.fixture(scope="module")
def repositories(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("standins")
    build(root / "cuda", "fabricmanager", ["535.261.03", "535.309.01"])
    build(root / "toolkit", "container-toolkit", ["1.17.7", "1.17.8"])
    return root


@pytest.mark.parametrize("name", ["cuda", "toolkit"])
def test_each_repository_is_signed_by_its_own_key(repositories, tmp_path, name):
    keyring = tmp_path / "keyring.gpg"
    subprocess.run(["gpg", "--batch", "--quiet", "--dearmor", "--output", str(keyring),
                    str(repositories / f"{name}-key.asc")], check=True)
    verified = subprocess.run(["gpgv", "--keyring", str(keyring),
                               str(repositories / name / "InRelease")], capture_output=True,
                              text=True, check=False)
    assert verified.returncode == 0, verified.stderr
    other = "toolkit" if name == "cuda" else "cuda"
    subprocess.run(["gpg", "--batch", "--quiet", "--yes", "--dearmor", "--output", str(keyring),
                    str(repositories / f"{other}-key.asc")], check=True)
    assert subprocess.run(["gpgv", "--keyring", str(keyring),
                           str(repositories / name / "InRelease")], capture_output=True,
                          check=False).returncode != 0


def test_fabricmanager_carries_nvidias_names_versions_and_relations(repositories):
    records = {(r["Package"], r["Version"]): r for r in _records(repositories / "cuda")}
    assert set(records) == {(p, v) for p in ("nvidia-fabricmanager-535", "libnvidia-nscq-535")
                            for v in ("535.261.03-1", "535.309.01-1")}
    assert records["nvidia-fabricmanager-535", "535.261.03-1"]["Provides"] == \
        "nvidia-fabricmanager (= 535.261.03-1)"
    assert all(r["Description"].startswith("STAND-IN") for r in records.values())


def test_the_toolkit_needs_its_base_at_exactly_its_own_version(repositories):
    records = {(r["Package"], r["Version"]): r for r in _records(repositories / "toolkit")}
    assert {p for p, _ in records} == {"nvidia-container-toolkit", "nvidia-container-toolkit-base",
                                       "libnvidia-container-tools", "libnvidia-container1"}
    assert records["nvidia-container-toolkit", "1.17.7-1"]["Depends"].startswith(
        "nvidia-container-toolkit-base (= 1.17.7-1), libnvidia-container-tools (>= 1.17.7-1)")


def _nvidia_ctk(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    program = tmp_path / "nvidia-ctk"
    program.write_text((FILES / "nvidia-ctk.py").read_text().replace("@VERSION@", "1.17.7"))
    return subprocess.run([sys.executable, str(program), *args], capture_output=True, text=True,
                          check=False)


def test_nvidia_ctk_adds_the_runtime_to_debians_containerd_configuration(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(DEBIAN_CONTAINERD)
    dry = _nvidia_ctk(tmp_path, "runtime", "configure", "--runtime=containerd",
                      f"--config={config}", "--set-as-default", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert config.read_text() == DEBIAN_CONTAINERD  # --dry-run writes nothing
    parsed = tomllib.loads(dry.stdout)
    cri = parsed["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["cni"] == {"bin_dir": "/usr/lib/cni", "conf_dir": "/etc/cni/net.d"}
    assert cri["containerd"]["default_runtime_name"] == "nvidia"
    assert cri["containerd"]["runtimes"]["nvidia"]["runtime_type"] == "io.containerd.runc.v2"
    assert cri["containerd"]["runtimes"]["nvidia"]["options"] == {
        "BinaryName": "/usr/bin/nvidia-container-runtime"}
    written = _nvidia_ctk(tmp_path, "runtime", "configure", "--runtime=containerd",
                          f"--config={config}", "--set-as-default")
    assert written.returncode == 0 and config.read_text() == dry.stdout
    again = _nvidia_ctk(tmp_path, "runtime", "configure", "--runtime=containerd",
                        f"--config={config}", "--set-as-default", "--dry-run")
    assert again.stdout == dry.stdout  # a second run changes nothing


def test_nvidia_ctk_adds_the_runtime_to_docker_and_refuses_what_it_does_not_stand_in_for(
        tmp_path):
    config = tmp_path / "daemon.json"
    config.write_text('{"log-driver": "journald"}\n')
    dry = _nvidia_ctk(tmp_path, "runtime", "configure", "--runtime=docker", f"--config={config}",
                      "--dry-run")
    assert json.loads(dry.stdout) == {"log-driver": "journald", "runtimes": {
        "nvidia": {"args": [], "path": "nvidia-container-runtime"}}}
    refused = _nvidia_ctk(tmp_path, "cdi", "generate")
    assert refused.returncode == 2 and "stand-in" in refused.stderr
