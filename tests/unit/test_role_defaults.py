"""Every role's defaults can be read before the role runs: Ansible checks a role's arguments
(meta/argument_specs.yml) against its defaults before any of its tasks, so a default templated
from a private variable (``__name``, set by the role's vars files or tasks) fails that check
wherever the user did not override it. roles/fabricmanager's repository URL once did."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "gpuprov" / "ansible" / "roles"
_TEMPLATE = re.compile(r"{{(.*?)}}", re.DOTALL)


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


@pytest.mark.parametrize("defaults", sorted(ROLES.glob("*/defaults/main.yml")),
                         ids=lambda p: p.parts[-3])
def test_no_default_is_templated_from_a_private_variable(defaults):
    found = yaml.safe_load(defaults.read_text()) or {}
    for name, value in found.items():
        for text in _strings(value):
            for expression in _TEMPLATE.findall(text):
                private = re.findall(r"\b__\w+", expression)
                assert not private, f"{name} is templated from {private} in {defaults}"
