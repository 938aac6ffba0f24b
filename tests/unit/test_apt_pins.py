"""The NVIDIA pin planner over Debian's own package records.

fixtures/apt-bookworm-nvidia.Packages was recorded on 2026-12-04 from deb.debian.org (bookworm,
bookworm-updates and bookworm-security; main contrib non-free non-free-firmware): every
record that mentions NVIDIA (the ones the planner reads; it skips the others unparsed),
with the fields the planner reads. It holds the measured problem: the security suite has the
driver at 535.309.01, while the open kernel module stayed at 535.261.03.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuprov.errors import UsageError
from gpuprov.plan.apt_pins import compare_versions, parse_records, plan_pins, upstream_version

FIXTURE = Path(__file__).parent / "fixtures" / "apt-bookworm-nvidia.Packages"


@pytest.fixture(scope="module")
def records():
    return parse_records(FIXTURE.read_text())


# (a, b, sign of compare(a, b)): the ordering rules of deb-version(7).
@pytest.mark.parametrize(("a", "b", "sign"), [
    ("535.261.03-1", "535.309.01-0+deb12u1", -1),
    ("535.216.03-3~deb12u1", "535.216.03-3", -1),  # ~ sorts before everything, even the end
    ("1.0~rc1", "1.0", -1),
    ("1:0.1", "2.0", 1),  # the epoch first
    ("20220217+3~deb12u1", "20220217+3", -1),
    ("1.0-1", "1.0-1", 0),
    ("1.0a", "1.0+", -1),  # letters sort before non-letters
    ("1.01", "1.1", 0),  # numbers compare as numbers
    ("2.10", "2.9", 1),
    ("1.0", "1.0-0", 0),  # no revision is revision 0
])
def test_versions_sort_as_dpkg_sorts_them(a, b, sign):
    assert (compare_versions(a, b) > 0) - (compare_versions(a, b) < 0) == sign
    assert (compare_versions(b, a) > 0) - (compare_versions(b, a) < 0) == -sign


def test_upstream_version():
    assert upstream_version("535.261.03-1") == "535.261.03"
    assert upstream_version("1:2.0-3") == "2.0"
    assert upstream_version("470.256.02") == "470.256.02"


def test_records_keep_alternatives_and_versioned_provides(records):
    [gsp] = [r for r in records if r.package == "firmware-nvidia-gsp"
             and r.version == "535.261.03-1"]
    assert gsp.source == "nvidia-graphics-drivers"
    assert {(p.name, p.version) for p in gsp.provides} == {
        ("firmware-nvidia-gsp", "535.261.03"), ("firmware-nvidia-gsp-535.261.03", None)}
    [module] = [r for r in records if r.package == "nvidia-open-kernel-dkms"]
    first = module.depends[1]  # after Pre-Depends: nvidia-installer-cleanup
    assert [str(r) for r in first] == ["firmware-nvidia-gsp (= 535.261.03)",
                                       "firmware-nvidia-gsp-535.261.03"]


def test_the_open_flavour_holds_the_whole_family_back_to_the_module(records):
    plan = plan_pins(["nvidia-open-kernel-dkms", "nvidia-driver"], records)
    assert plan.driver_version == "535.261.03"
    # The driver's own packages, the firmware the module needs, and the library apt removed
    # when only two packages were pinned: all at the module's version.
    for name in ("nvidia-open-kernel-dkms", "nvidia-driver", "firmware-nvidia-gsp", "libcuda1",
                 "nvidia-kernel-support", "libnvidia-ml1", "nvidia-smi"):
        assert plan.pins.get(name, "").startswith("535.261.03") or name == "nvidia-kernel-support"
    assert "nvidia-kernel-dkms" not in plan.pins  # the open module Provides what it stands for
    assert plan.pins["nvidia-open-kernel-support"] == "535.261.03-1"
    # Packages with version lines of their own keep them.
    assert plan.pins["nvidia-support"] == "20220217+3~deb12u1"
    assert plan.pins["nvidia-persistenced"] == "535.171.04-1~deb12u1"
    assert not any(v.startswith("535.309") for n, v in plan.pins.items()
                   if n.startswith(("libnvidia", "nvidia-driver", "firmware", "libcuda")))
    assert any("535.309.01 is not offered for every one of them" in w for w in plan.why)


def test_the_proprietary_flavour_takes_the_security_update(records):
    plan = plan_pins(["nvidia-driver"], records)
    assert plan.driver_version == "535.309.01"
    assert plan.pins["nvidia-kernel-dkms"] == "535.309.01-0+deb12u1"
    assert plan.pins["firmware-nvidia-gsp"] == "535.309.01-0+deb12u1"
    assert "nvidia-open-kernel-dkms" not in plan.pins


def test_headless_and_tesla_sets(records):
    headless = plan_pins(["nvidia-open-kernel-dkms", "nvidia-smi", "libcuda1",
                          "nvidia-persistenced"], records)
    assert headless.driver_version == "535.261.03"
    assert "nvidia-driver" not in headless.pins and "xserver-xorg-video-nvidia" not in \
        headless.pins
    tesla = plan_pins(["nvidia-tesla-535-driver"], records)
    assert tesla.driver_version == "535.216.03"
    assert tesla.pins["nvidia-tesla-535-kernel-dkms"] == "535.216.03-3~deb12u1"
    assert tesla.pins["libnvidia-tesla-535-cuda1"] == "535.216.03-3~deb12u1"


def test_a_family_that_does_not_fit_together_is_refused_with_the_relation(records):
    # Without the release's GSP firmware, only the security suite's is left, which the open
    # module's exact dependency excludes.
    without = [r for r in records
               if not (r.package == "firmware-nvidia-gsp" and r.version == "535.261.03-1")]
    with pytest.raises(UsageError) as refused:
        plan_pins(["nvidia-open-kernel-dkms", "nvidia-driver"], without)
    assert "nvidia-open-kernel-dkms 535.261.03-1 needs firmware-nvidia-gsp (= 535.261.03) | " \
           "firmware-nvidia-gsp-535.261.03, and the archive offers firmware-nvidia-gsp " \
           "535.309.01-0+deb12u1" in str(refused.value)


def test_missing_packages_and_no_shared_version_are_refused(records):
    with pytest.raises(UsageError, match="the archive has no nvidia-tesla-999-driver"):
        plan_pins(["nvidia-tesla-999-driver"], records)
    # Each pair shares a version, all three none.
    lines = parse_records("".join(
        f"Package: nvidia-{name}\nSource: nvidia-graphics-drivers\nVersion: {version}\n\n"
        for name, versions in (("a", ("1.0-1", "2.0-1")), ("b", ("2.0-1", "3.0-1")),
                               ("c", ("1.0-1", "3.0-1"))) for version in versions))
    with pytest.raises(UsageError, match="no driver version is offered for all of nvidia-a, "
                                         "nvidia-b, nvidia-c"):
        plan_pins(["nvidia-a", "nvidia-b", "nvidia-c"], lines)


def test_the_preferences_file(records):
    plan = plan_pins(["nvidia-tesla-535-driver"], records)
    text = plan.preferences("written by gpuprov")
    assert text.startswith("# written by gpuprov\n\nPackage: ")
    stanza = "Package: nvidia-tesla-535-driver\nPin: version 535.216.03-3~deb12u1\n" \
             "Pin-Priority: 1001\n"
    assert stanza in text
    assert text.count("Pin-Priority: 1001") == len(plan.pins)
