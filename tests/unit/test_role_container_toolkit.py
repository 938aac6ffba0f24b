"""The container_toolkit role's reading of its state script
(roles/container_toolkit/filter_plugins).

fixtures/container_toolkit/lab-docker-containerd.txt is files/container-toolkit-state.sh's real
output on a lab host after the role installed the stand-in toolkit 1.17.7 (tests/standins) and
wired Debian's docker.io and containerd to the nvidia runtime as their default; the lab has no
NVIDIA GPU, so nvidia-smi exits 9. The other cases change sections of it; CRI-O's follow
`crio config`'s layout ([crio.runtime.runtimes.NAME] with runtime_path).
"""

from __future__ import annotations

from pathlib import Path

from gpuprov.ansible.roles.container_toolkit.filter_plugins.container_toolkit import (
    container_toolkit_state,
)

REAL = (Path(__file__).parent / "fixtures/container_toolkit/lab-docker-containerd.txt").read_text()
PACKAGES = ("nvidia-container-toolkit", "nvidia-container-toolkit-base",
            "libnvidia-container-tools", "libnvidia-container1")
PINS = dict.fromkeys(PACKAGES, "1.17.7-1")
CRIO = """\
  default_runtime = "nvidia"
  [crio.runtime.runtimes.nvidia]
  runtime_path = "/usr/bin/nvidia-container-runtime"
  runtime_type = "oci"
"""


def _with(text: str, **sections: str) -> str:
    """``text`` with the named sections' lines replaced."""
    out, skipping = [], False
    for line in text.splitlines():
        if line.startswith("== "):
            skipping = line[3:] in sections
            out.append(line)
            if skipping:
                out.extend(sections[line[3:]].splitlines())
        elif not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


def _state(text: str = REAL, runtimes=(), default=True, pins=None) -> dict:
    return container_toolkit_state(text, PINS if pins is None else pins, list(runtimes), default)


def test_the_real_lab_output_is_right():
    state = _state()
    assert state["problems"] == []
    assert state["wanted"] == ["docker", "containerd"]
    assert state["wired"]["docker"]["runtimes"]["nvidia"] == "nvidia-container-runtime"
    assert state["wired"]["docker"]["default"] == "nvidia"
    assert state["wired"]["containerd"] == {
        "nvidia": True, "binary": "/usr/bin/nvidia-container-runtime", "default": "nvidia"}
    assert state["gpus"]["exit"] == 9 and not state["gpu_answers"] and not state["cdi_spec"]


def test_docker_without_the_nvidia_runtime():
    text = _with(REAL, docker='{"runc":{"path":"runc"}}\ndefault runc')
    assert _state(text)["problems"] == [
        "docker info does not list the nvidia runtime: run nvidia-ctk runtime configure "
        "--runtime=docker and restart docker"]
    # Listed but not the default, when it must be.
    text = _with(REAL, docker='{"nvidia":{"path":"nvidia-container-runtime"}}\ndefault runc')
    assert _state(text)["problems"] == ["docker's default runtime is runc, not nvidia"]
    assert _state(text, default=False)["problems"] == []


def test_a_daemon_that_does_not_answer_is_named():
    text = _with(REAL, docker="Cannot connect to the Docker daemon at unix:///var/run/docker.sock."
                              " Is the docker daemon running?")
    (problem,) = _state(text)["problems"]
    assert problem.startswith("docker info does not list the nvidia runtime (Cannot connect")
    stopped = _with(REAL, runtimes="docker inactive\ncontainerd active")
    assert _state(stopped)["problems"] == [
        "docker is inactive, so it cannot say which runtimes it has: systemctl start docker"]


def test_containerd_without_the_nvidia_runtime():
    text = _with(REAL, containerd='      default_runtime_name = "runc"')
    assert _state(text)["problems"] == [
        "containerd's configuration has no nvidia runtime running "
        "/usr/bin/nvidia-container-runtime: run nvidia-ctk runtime configure "
        "--runtime=containerd and restart containerd"]


def test_only_the_runtimes_asked_for_are_checked_and_each_must_be_installed():
    text = _with(REAL, containerd="")
    assert _state(text, runtimes=["docker"])["problems"] == []
    assert _state(REAL, runtimes=["crio"])["problems"] == [
        "crio is not installed: install it, or leave it out of container_toolkit_runtimes"]
    assert _state(_with(REAL, runtimes=""))["problems"] == [
        "no container runtime (docker, containerd, CRI-O) is installed: install one, then run "
        "this again"]


def test_crio_is_read_from_its_configuration():
    text = _with(REAL, runtimes="crio active", crio=CRIO)
    state = _state(text)
    assert state["wanted"] == ["crio"] and state["problems"] == []
    assert state["wired"]["crio"]["binary"] == "/usr/bin/nvidia-container-runtime"


def test_packages_off_their_pins_or_not_held():
    text = _with(REAL, packages="nvidia-container-toolkit 1.17.8-1 hi\n"
                                "nvidia-container-toolkit-base 1.17.7-1 ii",
                 holds="nvidia-container-toolkit")
    assert _state(text)["problems"] == [
        "not installed: libnvidia-container-tools libnvidia-container1",
        "not at their pinned versions: nvidia-container-toolkit 1.17.8-1 (pinned 1.17.7-1)",
        "not held (apt-mark hold them): nvidia-container-toolkit-base"]


def test_gpus_that_answer_need_a_cdi_spec():
    gpus = "GPU 0: NVIDIA H200 (UUID: GPU-5d0f9b1e-0000-0000-0000-000000000000)\nexit 0"
    state = _state(_with(REAL, gpus=gpus))
    assert state["gpu_answers"] and state["gpus"]["list"] == [gpus.splitlines()[0]]
    assert state["problems"] == [
        "no CDI spec for the GPUs: nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml"]
    assert _state(_with(REAL, gpus=gpus, cdi="/etc/cdi/nvidia.yaml"))["problems"] == []
