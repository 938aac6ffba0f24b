"""testinfra: after the guest stage, Debian's NVIDIA packages are installed at their pins and
held, the prebuilt module is installed for the running kernel, the role's DKMS compile path
built a STAND-IN module for real, nouveau stays off, and the pins (fabricmanager's and the
toolkit's too) survive the upgrades an administrator runs. Read from the host itself (apt,
dpkg, DKMS, kmod), not from the role's own report."""

from __future__ import annotations

import re

import pytest


def _pinned(host, name: str) -> dict[str, str]:
    """Package -> version in a role's apt preferences file, /etc/apt/preferences.d/NAME.pref."""
    text = host.file(f"/etc/apt/preferences.d/{name}.pref").content_string
    found = dict(re.findall(r"^Package: (\S+)\nPin: version (\S+)\nPin-Priority: 1001$", text,
                            re.MULTILINE))
    assert found, text
    return found


@pytest.fixture(scope="module")
def pins(host) -> dict[str, str]:
    return _pinned(host, "gpuprov-nvidia")


def _installed(host, packages) -> dict[str, str]:
    out = host.run("dpkg-query --show --showformat='${Package} ${Version} ${db:Status-Abbrev}\\n' "
                   + " ".join(packages)).stdout
    return {name: version for name, version, state in
            (line.split() for line in out.splitlines() if len(line.split()) == 3)
            if state in ("ii", "hi")}


def _assert_pinned_and_held(host, pins):
    installed = _installed(host, pins)
    # The matched headless set and what it pulled in.
    assert {"nvidia-open-kernel-dkms", "nvidia-smi", "libcuda1", "nvidia-persistenced",
            "firmware-nvidia-gsp"} <= set(installed)
    assert installed == {name: pins[name] for name in installed}
    held = set(host.run("apt-mark showhold").stdout.split())
    assert set(installed) <= held
    assert {"linux-image-amd64"} <= held  # the kernel cannot outrun the prebuilt module


def _assert_module_installed(host):
    kernel = host.run("uname -r").stdout.strip()
    status = host.run(f"dkms status -k {kernel}").stdout
    assert re.search(rf"^nvidia-current-open/535\.\d+\.\d+, {re.escape(kernel)}, x86_64: "
                     r"installed$", status, re.MULTILINE), status
    module = f"/lib/modules/{kernel}/updates/dkms/nvidia-current-open.ko"
    assert host.file(module).exists
    vermagic = host.run(f"modinfo -F vermagic {module}").stdout
    assert vermagic.startswith(f"{kernel} SMP"), vermagic


def test_the_driver_is_installed_at_its_pins_and_held(host, pins):
    _assert_pinned_and_held(host, pins)


def test_the_prebuilt_module_is_installed_for_the_running_kernel(host):
    _assert_module_installed(host)
    # Nothing was compiled here: a DKMS build leaves its object files in the module's build
    # directory, and the package's own build never ran.
    kernel = host.run("uname -r").stdout.strip()
    objects = host.run("find /var/lib/dkms -name '*.o' -not -path '/var/lib/dkms/gpuprov-standin/*'"
                       ).stdout
    assert not objects.strip(), objects
    assert host.run(f"test -e /usr/src/linux-headers-{kernel}").rc == 0
    assert not host.file("/etc/dkms/no-autoinstall").exists


def test_the_roles_compile_path_built_the_standin_module_for_real(host):
    # STAND-IN: gpuprov's own tiny DKMS module, compiled here by the role's DKMS compile path.
    kernel = host.run("uname -r").stdout.strip()
    status = host.run(f"dkms status -k {kernel}").stdout
    assert re.search(rf"^gpuprov-standin/1\.0, {re.escape(kernel)}, x86_64: installed$", status,
                     re.MULTILINE), status
    # DKMS's log of the compile it ran here (it cleans the build directory afterwards).
    log = host.file(f"/var/lib/dkms/gpuprov-standin/1.0/{kernel}/x86_64/log/make.log")
    assert "CC [M]  /var/lib/dkms/gpuprov-standin/1.0/build/gpuprov_standin.o" in (
        log.content_string)
    module = host.run(f"ls /lib/modules/{kernel}/updates/dkms/gpuprov_standin.ko*").stdout.strip()
    assert module, "the module is not installed for the running kernel"
    assert host.run(f"modinfo -F description {module}").stdout.strip() == (
        "gpuprov STAND-IN DKMS module (tests only)")
    # The running kernel loads it: built against its own headers.
    loaded = host.run("modprobe gpuprov_standin && grep -c '^gpuprov_standin ' /proc/modules; "
                      "modprobe -r gpuprov_standin")
    assert loaded.rc == 0 and loaded.stdout.strip() == "1", loaded.stderr


def test_nouveau_stays_off_and_nvidia_smi_says_why_it_cannot_answer(host):
    assert "blacklist nouveau" in host.run("modprobe --showconfig").stdout.splitlines()
    assert not host.file("/sys/module/nouveau").exists
    # The lab's card is a stand-in (1234:1111), so there is no NVIDIA GPU for the driver.
    smi = host.run("nvidia-smi")
    assert smi.rc == 9
    assert "couldn't communicate with the NVIDIA driver" in smi.stdout


def test_the_initramfs_was_rebuilt_with_the_drivers_files_and_updates_are_on_again(host):
    # The role turns initramfs updates off while apt installs the driver (dpkg would rebuild it
    # at each trigger run) and rebuilds it once after: the rebuild saw the packages' files.
    conf = host.file("/etc/initramfs-tools/update-initramfs.conf").content_string
    assert re.search(r"^update_initramfs=yes$", conf, re.MULTILINE), conf
    kernel = host.run("uname -r").stdout.strip()
    listing = host.run(f"lsinitramfs /boot/initrd.img-{kernel}").stdout.split()
    assert "etc/modprobe.d/nvidia-blacklists-nouveau.conf" in listing


def test_the_pins_hold_through_upgrade_and_full_upgrade(host, pins):
    # bookworm-security carries the driver at 535.309.01 while the open module stays at
    # 535.261.03: without the pins and holds, these would move part of the driver or remove it.
    for command in ("apt-get update -q", "apt-get upgrade --yes -q",
                    "apt-get full-upgrade --yes -q", "apt-get autoremove --yes -q"):
        result = host.run(f"DEBIAN_FRONTEND=noninteractive {command}")
        assert result.rc == 0, f"{command}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    _assert_pinned_and_held(host, pins)
    _assert_module_installed(host)
    # fabricmanager and the toolkit too stay at their pins, though their repositories offer
    # newer versions.
    for name in ("gpuprov-fabricmanager", "gpuprov-container-toolkit"):
        others = _pinned(host, name)
        assert _installed(host, others) == others
