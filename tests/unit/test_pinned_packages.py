"""The pinned_packages role's choice of versions (roles/pinned_packages/filter_plugins): from
what `apt-cache madison` lists, the build each package is pinned to; and what must be installed.
"""

from __future__ import annotations

import pytest

from gpuprov.ansible.roles.pinned_packages.filter_plugins.pinned_packages import (
    parse_madison,
    pinned_packages_choose,
    pinned_packages_installed,
    pinned_packages_to_install,
    upstream_version,
)

# apt-cache madison on a lab host with the stand-in of NVIDIA's libnvidia-container repository.
MADISON = """\
nvidia-container-toolkit |   1.17.8-1 | file:/srv/gpuprov-standin-toolkit  Packages
nvidia-container-toolkit |   1.17.7-1 | file:/srv/gpuprov-standin-toolkit  Packages
nvidia-container-toolkit-base |   1.17.8-1 | file:/srv/gpuprov-standin-toolkit  Packages
nvidia-container-toolkit-base |   1.17.7-1 | file:/srv/gpuprov-standin-toolkit  Packages
"""
PINS = {"nvidia-container-toolkit": "1.17.7-1", "nvidia-container-toolkit-base": "1.17.7-1"}


@pytest.mark.parametrize(("version", "upstream"), [
    ("535.261.03-1", "535.261.03"), ("1:535.261.03-1~deb12u1", "535.261.03"),
    ("535.261.03", "535.261.03"), ("1.17.0~rc.2-1", "1.17.0~rc.2"),
])
def test_upstream_version(version, upstream):
    assert upstream_version(version) == upstream


def test_madison_lists_each_packages_versions_newest_first():
    assert parse_madison(MADISON + MADISON) == {
        "nvidia-container-toolkit": ["1.17.8-1", "1.17.7-1"],
        "nvidia-container-toolkit-base": ["1.17.8-1", "1.17.7-1"]}


@pytest.mark.parametrize("wanted", ["1.17.7", "1.17.7-1"])
def test_an_upstream_or_a_full_version_is_chosen_never_the_newer_one(wanted):
    choice = pinned_packages_choose(MADISON, dict.fromkeys(PINS, wanted))
    assert choice == {"pins": PINS, "error": ""}


def test_an_empty_version_takes_the_newest():
    assert pinned_packages_choose(MADISON, {"nvidia-container-toolkit": ""})["pins"] == {
        "nvidia-container-toolkit": "1.17.8-1"}


def test_a_version_the_repositories_lack_is_refused_with_what_they_have():
    choice = pinned_packages_choose(MADISON, {"nvidia-container-toolkit": "1.17.9",
                                              "libnvidia-container1": "1.17.9"})
    assert choice["pins"] == {}
    assert choice["error"] == (
        "no build of nvidia-container-toolkit 1.17.9 (the repositories have 1.17.8-1, "
        "1.17.7-1); libnvidia-container1 1.17.9 (the repositories have no version of it)")
    # A full version is matched exactly: another revision is not the same build.
    assert pinned_packages_choose(MADISON, {"nvidia-container-toolkit": "1.17.7-2"})["error"]


def test_the_package_database_and_what_to_install():
    installed = pinned_packages_installed(
        "nvidia-container-toolkit 1.17.8-1 hi\nnvidia-container-toolkit-base 1.17.7-1 ii\n"
        "libnvidia-container1 1.17.7-1 rc\n")
    assert installed == {"nvidia-container-toolkit": "1.17.8-1",
                         "nvidia-container-toolkit-base": "1.17.7-1"}
    assert pinned_packages_to_install(PINS, installed) == ["nvidia-container-toolkit=1.17.7-1"]
    assert pinned_packages_to_install(PINS, {}) == [
        "nvidia-container-toolkit=1.17.7-1", "nvidia-container-toolkit-base=1.17.7-1"]
    assert pinned_packages_to_install(PINS, PINS) == []
