"""testinfra: after converge, the NVIDIA Container Toolkit (from the STAND-IN of NVIDIA's
libnvidia-container repository, tests/standins) is installed at 1.17.7 though 1.17.8 is offered,
all four packages pinned and held, and Debian's real docker and containerd, asked themselves,
have the nvidia runtime as their default; docker runs a container through it. Read from the
host itself, not from the role's own report."""

from __future__ import annotations

import json
import re

PACKAGES = ("nvidia-container-toolkit", "nvidia-container-toolkit-base",
            "libnvidia-container-tools", "libnvidia-container1")
VERSION = "1.17.7-1"


def test_the_four_packages_are_at_one_version_pinned_and_held(host):
    out = host.run("dpkg-query --show --showformat='${Package} ${Version} ${db:Status-Abbrev}\\n' "
                   + " ".join(PACKAGES)).stdout
    assert sorted(line.split() for line in out.splitlines()) == \
        sorted([p, VERSION, "hi"] for p in PACKAGES), out
    offered = host.run("apt-cache madison nvidia-container-toolkit").stdout
    assert "1.17.8-1" in offered, offered
    pins = host.file("/etc/apt/preferences.d/gpuprov-container-toolkit.pref").content_string
    for package in PACKAGES:
        assert f"Package: {package}\nPin: version {VERSION}\nPin-Priority: 1001" in pins


def test_docker_lists_the_nvidia_runtime_as_its_default(host):
    info = host.run("docker info --format '{{json .Runtimes}}|{{.DefaultRuntime}}'")
    assert info.rc == 0, info.stderr
    runtimes, default = info.stdout.strip().split("|")
    assert json.loads(runtimes)["nvidia"]["path"] == "nvidia-container-runtime"
    assert default == "nvidia"


def test_containerd_has_the_nvidia_runtime_as_its_cri_default(host):
    dump = host.run("containerd config dump")
    assert dump.rc == 0, dump.stderr
    assert re.search(r'^\s*default_runtime_name = "nvidia"$', dump.stdout, re.MULTILINE)
    options = dump.stdout.split('[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia'
                                '.options]')[1]
    assert re.match(r'\s*BinaryName = "/usr/bin/nvidia-container-runtime"', options), options


def test_docker_runs_a_container_through_the_nvidia_runtime(host):
    # No registry is reachable: the image is Debian's static busybox (prepare unpacked it),
    # imported.
    image = host.run("docker image inspect gpuprov-standin/busybox >/dev/null 2>&1 || "
                     "tar -C /opt/gpuprov-standin-rootfs -c bin/busybox | "
                     "docker import - gpuprov-standin/busybox")
    assert image.rc == 0, image.stderr
    # The kernel has AppArmor and docker.io came without its Recommends (apparmor): the
    # container runs unconfined, which has nothing to do with its runtime.
    created = host.run("docker create --network none --security-opt apparmor=unconfined "
                       "gpuprov-standin/busybox /bin/busybox echo through-nvidia")
    assert created.rc == 0, created.stderr
    container = created.stdout.strip()
    try:
        assert host.run(f"docker inspect --format '{{{{.HostConfig.Runtime}}}}' {container}") \
            .stdout.strip() == "nvidia"
        started = host.run(f"docker start --attach {container}")
        assert started.rc == 0 and started.stdout.strip() == "through-nvidia", \
            started.stdout + started.stderr
    finally:
        host.run(f"docker rm --force {container}")
