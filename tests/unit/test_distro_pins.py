"""Ubuntu's and the RHEL family's driver pins and repository setup, table-tested against the
data the package ships (tests/unit/fixtures/distro_pins.yaml), and that data checked against
itself. No Ubuntu or RHEL archive is read: these prove the planning, not the packages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gpuprov.errors import UsageError
from gpuprov.plan.distro_pins import plan_distro_pins
from gpuprov.plan.driver import DriverData, DriverRequest, match

ROOT = Path(__file__).parents[2]
CASES = yaml.safe_load((Path(__file__).parent / "fixtures" / "distro_pins.yaml").read_text())
DATA = DriverData.load()
DISTROS_YAML = (ROOT / "gpuprov" / "data" / "nvidia" / "distros.yaml").read_text()


def _plan(case):
    found = match(DATA, DriverRequest(**case["request"]))
    return plan_distro_pins(DATA, found, case["version"], headless=case.get("headless", False))


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_distro_pins(case):
    if "error" in case:
        with pytest.raises(UsageError) as raised:
            _plan(case)
        error = raised.value
        for text in case["error"]["message"]:
            assert text in error.message
        for text in case["error"].get("hint", []):
            assert text in (error.hint or "")
        return
    planned = _plan(case).to_json()
    expect = dict(case["expect"])
    if (preferences := expect.pop("preferences", None)) is not None:
        header, _, body = planned["preferences"].partition("\n\n")
        assert all(line.startswith("# ") for line in header.splitlines()), header
        assert body == preferences
    for key, value in expect.items():
        assert planned[key] == value, (key, planned)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_each_case_cites_a_source_the_data_cites(case):
    source = case["source"]
    assert source in DISTROS_YAML or (ROOT / source).is_file(), source


def test_the_preferences_header_says_what_is_pinned():
    found = match(DATA, DriverRequest("10de:1d01", "ubuntu24.04"))
    preferences = plan_distro_pins(DATA, found, "580.95.05").preferences
    assert preferences.startswith("# gpuprov: Ubuntu 24.04 LTS (noble), driver 580.95.05 "
                                  "(proprietary modules), any Ubuntu revision of it.\n")
    assert preferences.endswith("Pin-Priority: 1001\n")


def test_every_distro_but_debian_says_where_its_driver_comes_from():
    for name, distro in DATA.distros.items():
        repository = distro.get("repository")
        if distro["family"] == "debian":
            assert repository is None, name  # its sources are the archive's (drivers.py)
        elif distro["family"] == "ubuntu":
            assert repository == {"suites": ["{codename}", "{codename}-updates",
                                             "{codename}-security"],
                                  "component": "restricted"}, name
            assert distro["codename"] in distro["name"], name
        else:
            base = f"https://developer.download.nvidia.com/compute/cuda/repos/{name}/x86_64/"
            assert repository["repo_file"] == f"{base}cuda-{name}.repo"
            assert repository["gpg_key"].startswith(base)
            assert repository["epel_release"].startswith("https://dl.fedoraproject.org/pub/epel/")
