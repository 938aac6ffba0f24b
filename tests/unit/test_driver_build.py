"""What `gpuprov driver build` plans, and how it reads DKMS: pure functions, over the recorded
bookworm archive (fixtures/apt-bookworm-nvidia.Packages, see test_apt_pins.py) and over
`dkms status` lines in the formats of Debian's dkms 3.0.10 (fixtures/dkms-status.txt)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuprov.errors import UsageError
from gpuprov.plan.apt_pins import parse_records, plan_pins
from gpuprov.plan.driver_build import (
    MODULE_SIGNATURE_MAGIC,
    DkmsModule,
    check_kernel,
    dkms_module_name,
    is_signed,
    parse_dkms_status,
    plan_module_build,
    signing_conf,
)

FIXTURES = Path(__file__).parent / "fixtures"
OPEN_HEADLESS = ["nvidia-open-kernel-dkms", "nvidia-smi", "libcuda1", "nvidia-persistenced"]


@pytest.fixture(scope="module")
def records():
    return parse_records((FIXTURES / "apt-bookworm-nvidia.Packages").read_text())


@pytest.fixture(scope="module")
def open_build(records):
    return plan_module_build(OPEN_HEADLESS, plan_pins(OPEN_HEADLESS, records), "bookworm",
                             "6.1.0-50-amd64")


def test_the_module_package_is_built_at_its_pinned_version(open_build):
    assert open_build.package == "nvidia-open-kernel-dkms"
    # The security suite's driver is newer (535.309.01); the open module only exists at 535.261.03,
    # so the pins, and with them the build, hold the whole family there.
    assert open_build.version == "535.261.03-1"
    assert open_build.driver_version == "535.261.03"
    assert open_build.headers == "linux-headers-6.1.0-50-amd64"
    assert open_build.pins.pins["firmware-nvidia-gsp"].startswith("535.261.03")
    assert open_build.cache_name == \
        "nvidia-open-kernel-dkms_535.261.03-1_bookworm_6.1.0-50-amd64.dkms.tar.gz"
    assert json.loads(json.dumps(open_build.to_json()))["signed"] is False


def test_the_cache_name_holds_the_signing_certificate_and_quotes_an_epoch(records, open_build):
    signed = plan_module_build(OPEN_HEADLESS, open_build.pins, "bookworm", "6.1.0-50-amd64",
                               signing_cert_sha256="ab" * 32)
    assert signed.cache_name.endswith("_signed-abababababababab.dkms.tar.gz")
    assert signed.cache_name != open_build.cache_name
    pins = open_build.pins.__class__("1.2", {"nvidia-kernel-dkms": "1:1.2-1"})
    epoch = plan_module_build(["nvidia-kernel-dkms"], pins, "bookworm", "6.1.0-50-amd64")
    assert epoch.cache_name.startswith("nvidia-kernel-dkms_1%3A1.2-1_")
    assert epoch.driver_version == "1.2"


@pytest.mark.parametrize("kernel", ["6.1.0-50-amd64", "6.12.57+deb13-amd64",
                                    "6.1.0-50-cloud-amd64", "6.1.0-50-rt-amd64"])
def test_debian_kernel_releases_are_accepted(kernel):
    check_kernel(kernel)


@pytest.mark.parametrize("kernel", ["", "bogus", "6.1.0", "6.1.0-50", "../../etc-amd64",
                                    "6.1.0-50-amd64 && reboot", "5.15.0-91-generic;"])
def test_anything_else_is_refused_before_any_download(kernel):
    with pytest.raises(UsageError, match="not a Debian kernel release"):
        check_kernel(kernel)


def test_packages_without_exactly_one_module_package_are_refused(records, open_build):
    with pytest.raises(UsageError, match="0 DKMS module packages"):
        plan_module_build(["nvidia-smi"], open_build.pins, "bookworm", "6.1.0-50-amd64")
    with pytest.raises(UsageError, match="2 DKMS module packages"):
        plan_module_build(["nvidia-kernel-dkms", "nvidia-open-kernel-dkms"], open_build.pins,
                          "bookworm", "6.1.0-50-amd64")
    with pytest.raises(UsageError, match="does not hold nvidia-kernel-dkms"):
        plan_module_build(["nvidia-kernel-dkms"], open_build.pins, "bookworm", "6.1.0-50-amd64")


def test_signing_is_either_the_fleet_key_or_explicitly_none():
    assert 'mok_signing_key="/run/gpuprov-mok/mok.key"' in signing_conf(True)
    assert 'mok_certificate="/run/gpuprov-mok/mok.pub"' in signing_conf(True)
    unsigned = signing_conf(False)
    # Without a key DKMS would make a throwaway one and sign with it; a sign-file that cannot
    # exist makes it say "modules won't be signed" instead.
    assert 'sign_file="/nonexistent/' in unsigned and "mok" not in unsigned


def test_dkms_status_lines_in_every_format(tmp_path):
    status = parse_dkms_status((FIXTURES / "dkms-status.txt").read_text())
    assert status == [
        DkmsModule("nvidia-current-open", "535.261.03", None, None, "added"),
        DkmsModule("nvidia-current-open", "535.261.03", "6.1.0-50-amd64", "x86_64", "built"),
        DkmsModule("nvidia-current", "535.261.03", "6.1.0-50-amd64", "x86_64", "installed"),
        DkmsModule("nvidia-current", "535.261.03", "6.1.0-49-amd64", "x86_64", "installed",
                   "(WARNING! Diff between built and installed module!)"),
        DkmsModule("nvidia-current", "535.261.03", "6.1.0-51-amd64", "x86_64",
                   "installed-weak", "from 6.1.0-50-amd64"),
        DkmsModule("nvidia", "470.256.02", "5.10.0-32-amd64", "x86_64", "installed"),
    ]


def test_the_dkms_name_comes_from_the_status_after_the_install(open_build):
    added = [DkmsModule("nvidia-current-open", "535.261.03", None, None, "added"),
             DkmsModule("other", "1.0", None, None, "added")]
    assert dkms_module_name(added, open_build) == "nvidia-current-open"
    with pytest.raises(ValueError, match=r"lists 0 modules at 535\.261\.03"):
        dkms_module_name(added[1:], open_build)


def test_a_signature_is_read_from_the_module_file():
    assert is_signed(b"\x7fELF...module..." + b"sig" + MODULE_SIGNATURE_MAGIC)
    assert not is_signed(b"\x7fELF...module...")
