"""The nvidia_driver role's reading of its state script (roles/nvidia_driver/filter_plugins).

fixtures/nvidia_driver/lab-prebuilt-open-535.txt is files/nvidia-driver-state.sh's real output
on a lab host (2026-12-06) after Debian's open 535.261.03 headless set was installed at its pins,
before the role held anything, with a module tarball from `gpuprov driver build` signed by a
test key. The lab's card is not an NVIDIA card, so there are no cards and nvidia-smi exits 9.
The other cases change one section of it each, to what the host would print then.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuprov.ansible.roles.nvidia_driver.filter_plugins.nvidia_driver import (
    nvidia_driver_sections,
    nvidia_driver_state,
)

REAL = (Path(__file__).parent / "fixtures/nvidia_driver/lab-prebuilt-open-535.txt").read_text()
KERNEL = "6.1.0-50-amd64"
VERSION = "535.261.03"
PACKAGES = ["nvidia-open-kernel-dkms", "nvidia-smi", "libcuda1", "nvidia-persistenced"]
PINS = {"nvidia-open-kernel-dkms": "535.261.03-1", "nvidia-smi": "535.261.03-1",
        "libcuda1": "535.261.03-1", "nvidia-persistenced": "535.171.04-1~deb12u1",
        "firmware-nvidia-gsp": "535.261.03-1", "nvidia-modprobe": "535.309.01-0+deb12u1",
        "nvidia-legacy-check": "535.261.03-1", "nvidia-kernel-common": "20220217+3~deb12u1"}
HOLDS = "\n".join(["firmware-nvidia-gsp", "libcuda1", "nvidia-legacy-check", "nvidia-modprobe",
                   "nvidia-open-kernel-dkms", "nvidia-persistenced", "nvidia-smi"])


def _with(section: str, lines: str, text: str = REAL) -> str:
    """``text`` with one section's lines replaced."""
    out, skipping = [], False
    for line in text.splitlines():
        if line.startswith("== "):
            skipping = line == f"== {section}"
            out.append(line)
            if skipping:
                out.extend(lines.splitlines())
        elif not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


def _state(text: str) -> dict:
    return nvidia_driver_state(text, VERSION, KERNEL, PINS, PACKAGES)


HELD = _with("holds", HOLDS)


def test_the_real_output_before_the_holds_lacks_only_the_holds():
    state = _state(REAL)
    assert state["module"] == "installed"
    assert state["installed"]["nvidia-persistenced"] == "535.171.04-1~deb12u1"
    assert state["signer"] == "gpuprov test fleet MOK"
    assert state["secure_boot"] is False
    assert state["cards"] == [] and state["loaded"] is None
    assert state["nvidia_smi"]["exit"] == 9
    assert state["problems"] == ["not held (apt-mark hold them): firmware-nvidia-gsp libcuda1 "
                                 "nvidia-legacy-check nvidia-modprobe nvidia-open-kernel-dkms "
                                 "nvidia-persistenced nvidia-smi"]
    assert "no NVIDIA GPU on this host" in state["gpu"]
    assert "couldn't communicate with the NVIDIA driver (exit 9)" in state["gpu"]


def test_held_it_is_right():
    state = _state(HELD)
    assert state["problems"] == [] and state["reboot_because"] == []


def test_the_kernel_metapackages_must_be_held_too_when_asked():
    text = _with("packages", "\n".join(nvidia_driver_sections(HELD)["packages"])
                 + "\nlinux-image-amd64 6.1.170-1 ii ", HELD)
    state = nvidia_driver_state(text, VERSION, KERNEL, PINS, PACKAGES, ["linux-image-amd64"])
    assert state["problems"] == ["not held (apt-mark hold them): linux-image-amd64"]


@pytest.mark.parametrize(("section", "lines", "problem"), [
    ("dkms", f"nvidia-current-open/535.261.03, {KERNEL}, x86_64: built",
     f"DKMS has no 535.261.03 module installed for the running kernel {KERNEL} (built)"),
    ("dkms", "nvidia-current-open/535.261.03: added", "(missing): install linux-headers-"),
    ("dkms", "nvidia-current-open/535.261.03, 6.1.0-49-amd64, x86_64: installed", "(missing)"),
    ("packages", "libcuda1 535.261.03-1 hi \nnvidia-smi 535.261.03-1 hi ",
     "not installed: nvidia-open-kernel-dkms nvidia-persistenced"),
    ("packages", "\n".join(line for line in nvidia_driver_sections(HELD)["packages"]
                           if not line.startswith("libcuda1 "))
     + "\nlibcuda1 535.309.01-0+deb12u1 hi ",
     "not at their pinned versions: libcuda1 535.309.01-0+deb12u1 (pinned 535.261.03-1)"),
    ("no-autoinstall", "present", "/etc/dkms/no-autoinstall is left over"),
    ("nouveau-blacklist", "", "modprobe has no 'blacklist nouveau'"),
    ("nvidia-smi", "NVIDIA-SMI has failed: something else\nexit 12",
     "nvidia-smi, with no NVIDIA GPU here, exited 12"),
])
def test_each_thing_wrong_is_named(section, lines, problem):
    problems = _state(_with(section, lines, HELD))["problems"]
    assert len(problems) == 1 and problem in problems[0], problems


def test_secure_boot_with_an_unsigned_module_is_a_problem_with_the_fix():
    text = _with("signer", "", _with("secure-boot", "1", HELD))
    [problem] = _state(text)["problems"]
    assert "Secure Boot is on and the module is unsigned" in problem
    assert "mokutil --import" in problem
    assert _state(_with("secure-boot", "1", HELD))["problems"] == []  # signed: fine


def test_a_gpu_bound_to_nouveau_or_another_loaded_version_needs_a_reboot():
    bound = _state(_with("cards", "0000:01:00.0 0x2330 nouveau", HELD))
    assert bound["reboot_because"] == ["nouveau drives 0000:01:00.0"]
    assert "a reboot is needed" in bound["gpu"]
    old = _state(_with("loaded", "535.216.03", _with("cards", "0000:01:00.0 0x2330 nvidia",
                                                      HELD)))
    assert old["reboot_because"] == ["NVIDIA module 535.216.03 is loaded, not 535.261.03"]


def test_with_a_gpu_nvidia_smi_must_report_the_version():
    card = _with("loaded", VERSION, _with("cards", "0000:01:00.0 0x2330 nvidia", HELD))
    good = _state(_with("nvidia-smi", f"{VERSION}\nexit 0", card))
    assert good["problems"] == [] and good["gpu"] == "1 NVIDIA GPU(s) on driver 535.261.03"
    wrong = _state(_with("nvidia-smi", "535.216.03\nexit 0", card))
    assert wrong["problems"] == ["nvidia-smi reports driver 535.216.03, not 535.261.03"]
    silent = _state(_with("nvidia-smi", "No devices were found\nexit 6", card))
    assert silent["problems"] == ["nvidia-smi failed: No devices were found"]
