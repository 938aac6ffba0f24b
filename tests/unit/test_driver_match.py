"""`gpuprov driver match`'s choice, table-tested against the data the package ships
(tests/unit/fixtures/driver_match.yaml), and that data checked against itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gpuprov.errors import GpuprovError
from gpuprov.plan.driver import DriverData, DriverRequest, match

CASES = yaml.safe_load((Path(__file__).parent / "fixtures" / "driver_match.yaml").read_text())
DATA = DriverData.load()


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_match(case):
    request = DriverRequest(**case["request"])
    if "error" in case:
        with pytest.raises(GpuprovError) as raised:
            match(DATA, request)
        error = raised.value
        assert error.exit_code == case["error"]["code"], error.message
        for text in case["error"]["message"]:
            assert text in error.message
        for text in case["error"].get("hint", []):
            assert text in (error.hint or "")
        return
    found = match(DATA, request).to_json()
    for key, value in case["expect"].items():
        assert found[key] == value, (key, found)
    assert found["why"][0].startswith(f"{found['gpu']} (")  # the card, then the reasons


def test_every_architecture_of_a_gpu_is_in_the_table():
    named = {gpu["architecture"] for gpu in DATA.gpus.values()} - {None}
    assert named <= set(DATA.architectures)


def test_no_card_is_in_a_debian_list_newer_than_its_architectures_last_branch():
    # Cross-checks architectures.yaml (NVIDIA's legacy list) against Debian's id lists.
    for pci_id, gpu in DATA.gpus.items():
        last = DATA.architectures.get(gpu["architecture"] or "", {}).get("last_branch")
        for codename, lists in gpu["debian"].items():
            for name in lists:
                branch = (DATA.current_branch(codename) if name == "current"
                          else int(m.group(1)) if (m := re.match(r"\D+-(\d+)", name)) else None)
                assert last is None or branch is None or branch <= last, (pci_id, name)


def test_the_tables_agree_with_what_debian_ships():
    for name, distro in DATA.distros.items():
        if distro["family"] == "debian":
            packages = DATA.debian[distro["codename"]]["packages"]
            for series in distro["series"]:
                assert series["version_of"] in packages, (name, series)
        else:
            assert distro["branches"] == sorted(distro["branches"], reverse=True), name
    # The CUDA minimums rise with the toolkit.
    ordered = sorted(DATA.cuda, key=lambda v: tuple(map(int, v.split("."))))
    minimums = [tuple(map(int, DATA.cuda[v].split("."))) for v in ordered]
    assert minimums == sorted(minimums)


def test_the_generated_data_names_its_sources():
    assert re.fullmatch(r"pci\.ids \S+ of Debian \w+", DATA.sources["names"])
    assert set(DATA.sources["ids"]) == set(DATA.debian) == {"bookworm", "trixie"}
    assert len(DATA.gpus) > 1000
