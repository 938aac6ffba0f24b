"""The nvidia_driver role's reading of its state script (roles/nvidia_driver/filter_plugins).

fixtures/nvidia_driver/lab-prebuilt-open-535.txt is files/nvidia-driver-state.sh's real output
on a lab host (2026-12-06) after Debian's open 535.261.03 headless set was installed at its pins,
before the role held anything, with a module tarball from `gpuprov driver build` signed by a
test key. The lab's card is not an NVIDIA card, so there are no cards and nvidia-smi exits 9.
The other cases change one section of it each, to what the host would print then.

Secure Boot's MOK enrolment: fixtures/nvidia_driver/mokutil-list-enrolled.txt and
mokutil-list-new.txt are the real output of Debian 12's mokutil 0.6.0-2 (`--list-enrolled`,
`--list-new`) over a stand-in efivarfs (libefivar's EFIVARFS_PATH) holding certificates made
for these fixtures with openssl: MokListRT with a "Debian Secure Boot CA" stand-in, the
"gpuprov test fleet MOK" and a certificate with a short serial (4096), and MokNew with a
"DKMS module signing key" made as DKMS makes /var/lib/dkms/mok.pub. SIG_KEY is what Debian 12's
modinfo (kmod 30) printed as sig_key for a module signed with the fleet key the way sign-file
signs: the certificate's serial number, not its Subject Key Identifier.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gpuprov.ansible.roles.nvidia_driver.filter_plugins.nvidia_driver import (
    nvidia_driver_sections,
    nvidia_driver_state,
)

FIXTURES = Path(__file__).parent / "fixtures/nvidia_driver"
REAL = (FIXTURES / "lab-prebuilt-open-535.txt").read_text()
SCRIPT = Path(__file__).resolve().parents[2] / \
    "gpuprov/ansible/roles/nvidia_driver/files/nvidia-driver-state.sh"
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
    """``text`` with one section's lines replaced (added at the end if it has none)."""
    out, skipping = [], False
    for line in text.splitlines():
        if line.startswith("== "):
            skipping = line == f"== {section}"
            out.append(line)
            if skipping:
                out.extend(lines.splitlines())
        elif not skipping:
            out.append(line)
    if f"== {section}" not in out:
        out += [f"== {section}", *lines.splitlines()]
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


# Secure Boot and the MOK list. The serial numbers as the state script prints them from the
# fixtures (test_the_script_reads_the_serials_from_modinfo_and_mokutil checks that).
SIG_KEY = "4E:E3:4F:10:07:61:D7:05:5D:6A:5A:37:78:01:88:84:92:AF:D8:5A"
ENROLLED = ("50:fa:3e:a2:1a:4a:b0:25:ec:a5:8d:5e:9a:39:0e:6d:8c:eb:69:4e\n"
            "4e:e3:4f:10:07:61:d7:05:5d:6a:5a:37:78:01:88:84:92:af:d8:5a\n"
            "1000")
PENDING = "65:fb:aa:58:1f:80:b4:2b:f0:27:a8:be:4b:bd:a5:7d:f5:f3:2c:3d"
SIGNED = _with("sig-key", SIG_KEY, _with("secure-boot", "1", HELD))


def _mok(enrolled: str, pending: str, text: str = SIGNED) -> dict:
    return _state(_with("mok-pending", pending, _with("mok-enrolled", enrolled, text)))


def test_a_signed_module_whose_key_is_enrolled_is_fine():
    state = _mok(ENROLLED, "none")
    assert state["mok"] == "enrolled" and state["problems"] == []
    # The ids compare without case, colons or leading zeros: a short serial prints as 1000.
    short = _mok(ENROLLED, "none", _with("sig-key", "10:00", SIGNED))
    assert short["mok"] == "enrolled"


def test_a_key_waiting_for_enrolment_keeps_the_module_from_loading_until_mokmanager():
    others = "\n".join(line for line in ENROLLED.splitlines() if line.upper() != SIG_KEY)
    state = _mok(others, f"{PENDING}\n{SIG_KEY.lower()}")
    assert state["mok"] == "pending"
    [problem] = state["problems"]
    assert problem == state["mok_note"]
    assert "waits in the MOK enrolment request" in problem
    assert "the kernel will not load the module until the enrolment is confirmed" in problem
    assert "MokManager's blue screen asks" in problem
    assert '"Enroll MOK", "Continue", "Yes"' in problem and '"Reboot"' in problem
    assert "mokutil --test-key CERT" in problem


def test_a_key_not_enrolled_is_reported_with_the_steps_to_enroll_it():
    state = _mok("none", PENDING)
    assert state["mok"] == "not enrolled"
    [problem] = state["problems"]
    assert f"(gpuprov test fleet MOK, serial {SIG_KEY}) is not enrolled" in problem
    assert "the kernel will not load the module" in problem
    assert "/var/lib/dkms/mok.pub" in problem and "--mok-cert" in problem
    assert "run mokutil --import CERT (it asks for a one-time password)" in problem
    assert '"Enroll MOK", "Continue", "Yes"' in problem
    assert 'mokutil --test-key CERT says "CERT is already enrolled"' in problem


def test_without_secure_boot_the_mok_list_does_not_matter():
    off = _mok("none", "none", _with("secure-boot", "0", SIGNED))
    assert off["mok"] is None and off["problems"] == []
    no_uefi = _mok("", "", _with("secure-boot", "", SIGNED))
    assert no_uefi["secure_boot"] is None and no_uefi["mok"] is None
    assert no_uefi["problems"] == []
    # The output from before these sections: nothing to say either.
    assert _state(HELD)["mok"] is None


def test_without_mokutil_the_enrolment_is_unknown_and_said_so():
    state = _mok("", "")
    assert state["mok"] == "unknown" and state["problems"] == []
    assert "whether its key is enrolled is unknown" in state["mok_note"]
    assert "apt-get install mokutil" in state["mok_note"]
    no_key = _mok(ENROLLED, "none", _with("sig-key", "", SIGNED))
    assert no_key["mok"] == "unknown" and "no signing key id" in no_key["mok_note"]


def test_an_unsigned_module_under_secure_boot_is_not_a_mok_question():
    state = _mok("none", "none", _with("signer", "", _with("sig-key", "", SIGNED)))
    assert state["mok"] is None
    [problem] = state["problems"]
    assert "Secure Boot is on and the module is unsigned" in problem


def _run_script(tmp_path: Path, mokutil: str | None) -> dict[str, list[str]]:
    """The state script's MOK sections, run by a real sh over stand-ins for the host's
    commands (PATH holds nothing else): modinfo prints the fleet module's signer and serial;
    ``mokutil`` is that program's body, or None for a host without it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("awk", "cat", "grep", "head", "od", "readlink", "sed"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    stubs = {
        "dkms": "echo 'nvidia-current-open/535.261.03, 6.1.0-50-amd64, x86_64: installed'",
        "modinfo": f'case "$4" in signer) echo "gpuprov test fleet MOK";; '
                   f'sig_key) echo "{SIG_KEY}";; esac',
        "dpkg-query": "exit 1", "apt-mark": "exit 0", "modprobe": "exit 1"}
    if mokutil is not None:
        stubs["mokutil"] = mokutil
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    done = subprocess.run([shutil.which("sh"), str(SCRIPT), KERNEL, VERSION, "nvidia-smi"],
                          env={"PATH": str(bin_dir)}, capture_output=True, text=True,
                          check=True)
    sections = nvidia_driver_sections(done.stdout)
    return {k: sections[k] for k in ("signer", "sig-key", "mok-enrolled", "mok-pending")}


def test_the_script_reads_the_serials_from_modinfo_and_mokutil(tmp_path):
    listings = (f'case "$1" in --list-enrolled) cat {FIXTURES}/mokutil-list-enrolled.txt;; '
                f'--list-new) cat {FIXTURES}/mokutil-list-new.txt;; esac')
    assert _run_script(tmp_path, listings) == {
        "signer": ["gpuprov test fleet MOK"], "sig-key": [SIG_KEY],
        "mok-enrolled": ENROLLED.splitlines(), "mok-pending": [PENDING]}


@pytest.mark.parametrize(("mokutil", "lines"), [
    ("exit 0", ["none"]),  # mokutil 0.6.0 with no MokNew/MokListRT variable prints nothing
    ("echo 'MokNew is empty'", ["none"]),  # as older mokutil says it
    (None, []),  # not installed: unknown
    ("echo 'EFI variables are not supported on this system' >&2; exit 1", []),
])
def test_the_script_tells_no_keys_from_no_answer(tmp_path, mokutil, lines):
    sections = _run_script(tmp_path, mokutil)
    assert sections["mok-enrolled"] == lines and sections["mok-pending"] == lines
