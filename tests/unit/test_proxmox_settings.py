"""Proxmox VE login settings from inventory variables and the environment, without a server."""

from __future__ import annotations

import pytest

from gpuprov.errors import UsageError
from gpuprov.hypervisors.proxmox.connection import settings_from

SECRET = "9f3c2d4e-5b6a-4c7d-8e9f-0a1b2c3d4e5f"


def test_a_token_from_the_inventory():
    settings = settings_from("pve1", {"ansible_host": "192.0.2.10",
                                      "pve_token": f"gpuprov@pve!ci={SECRET}"}, {})
    assert (settings.host, settings.port, settings.node) == ("192.0.2.10", 8006, "pve1")
    assert settings.is_token and settings.identity == "gpuprov@pve!ci"
    assert SECRET not in repr(settings)
    assert settings.redact(f"token {SECRET} refused") == "token ******** refused"


def test_the_environment_wins_and_a_bare_user_is_pam():
    settings = settings_from(
        "pve1", {"pve_token": f"gpuprov@pve!ci={SECRET}", "pve_api_host": "pve1.example",
                 "pve_node": "node-a", "pve_fingerprint": "ab" * 32},
        {"GPUPROV_PVE_TOKEN": "", "GPUPROV_PVE_USER": "root", "GPUPROV_PVE_PASSWORD": "pw"})
    # an empty GPUPROV_PVE_TOKEN does not count; the inventory's token still wins over a
    # password login, since a token is the preferred way in
    assert settings.is_token
    settings = settings_from("pve1", {"pve_node": "node-a"},
                             {"GPUPROV_PVE_USER": "root", "GPUPROV_PVE_PASSWORD": "pw"})
    assert settings.user == "root@pam" and not settings.is_token and settings.node == "node-a"
    assert "pw" not in repr(settings)


@pytest.mark.parametrize(("variables", "message"), [
    ({}, "no Proxmox VE login for pve1"),
    ({"pve_user": "root@pam"}, "no Proxmox VE login for pve1"),
    ({"pve_token": "gpuprov@pve:ci:secret"}, "is not USER@REALM!TOKENID=SECRET"),
    ({"pve_token": f"gpuprov!ci={SECRET}"}, "is not USER@REALM!TOKENID=SECRET"),
    ({"pve_token": f"a@pve!ci={SECRET}", "pve_api_port": "80a"}, "is not a port number"),
    ({"pve_token": f"a@pve!ci={SECRET}", "pve_fingerprint": "zz"}, "not a certificate fing"),
])
def test_bad_settings_say_what_is_wrong(variables, message):
    with pytest.raises(UsageError, match=message) as error:
        settings_from("pve1", variables, {})
    assert SECRET not in str(error.value) + str(error.value.hint)
