"""Connecting to the Proxmox VE API: endpoint and login from the inventory or the environment,
TLS verified by default (the system's CAs, a CA file, or a pinned certificate fingerprint), and
secrets kept out of every message.

Inventory variables of the ``--host`` entry: ``pve_api_host`` (else ``ansible_host``, else the
entry's name), ``pve_api_port`` (8006), ``pve_node`` (else the entry's name), and either an API
token, ``pve_token`` (``user@realm!tokenid=secret``, as ``pveum user token add`` prints it), or
``pve_user`` with ``pve_password``; ``pve_fingerprint`` (the SHA-256 fingerprint the GUI shows
under Certificates) or ``pve_ca_file`` for self-signed certificates. The environment wins:
``GPUPROV_PVE_TOKEN``, ``GPUPROV_PVE_USER``, ``GPUPROV_PVE_PASSWORD``, ``GPUPROV_PVE_FINGERPRINT``.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gpuprov.errors import HostUnreachable, UsageError
from gpuprov.hypervisors.settings import picker, port_number
from gpuprov.transport.tls import (
    fingerprint,
    matches,
    parse_pin,
    peer_certificate,
    unverified_context,
)

_TOKEN = re.compile(r"^(?P<user>[^\s!@]+@[^\s!]+)!(?P<name>[A-Za-z][\w.-]*)=(?P<secret>\S+)$")


@dataclass(frozen=True)
class PveSettings:
    name: str  # the inventory entry
    host: str
    node: str
    port: int = 8006
    user: str = ""  # user@realm, also of a token
    password: str = field(default="", repr=False)
    token_name: str | None = None
    token_secret: str = field(default="", repr=False)
    fingerprint: str | None = None  # lower-case hex, no colons
    ca_file: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_token(self) -> bool:
        return self.token_name is not None

    @property
    def identity(self) -> str:
        return f"{self.user}!{self.token_name}" if self.is_token else self.user

    def redact(self, text: str) -> str:
        """``text`` with the password and token secret replaced, for messages quoting the API."""
        for secret in (self.password, self.token_secret):
            if secret:
                text = text.replace(secret, "********")
        return text


def settings_from(name: str, variables: Mapping, environ: Mapping[str, str]) -> PveSettings:
    """The endpoint and login of inventory entry ``name``; the environment wins over the vars."""
    pick = picker(variables, environ)
    token = pick("GPUPROV_PVE_TOKEN", "pve_token")
    user = pick("GPUPROV_PVE_USER", "pve_user")
    password = pick("GPUPROV_PVE_PASSWORD", "pve_password")
    login: dict = {}
    if token:
        match = _TOKEN.match(token.strip())
        if not match:
            raise UsageError(f"the Proxmox API token of {name} is not USER@REALM!TOKENID=SECRET",
                             "give it as pveum prints it, for example "
                             "gpuprov@pve!ci=01234567-89ab-cdef-0123-456789abcdef")
        login = {"user": match["user"], "token_name": match["name"],
                 "token_secret": match["secret"]}
    elif user and password:
        login = {"user": user if "@" in user else f"{user}@pam", "password": password}
    else:
        raise UsageError(f"no Proxmox VE login for {name}",
                         "set pve_token (USER@REALM!TOKENID=SECRET, preferred) or pve_user and "
                         "pve_password for the host in the inventory (a vault keeps the secret), "
                         "or GPUPROV_PVE_TOKEN / GPUPROV_PVE_USER and GPUPROV_PVE_PASSWORD")
    port = port_number(pick(None, "pve_api_port") or "8006", "pve_api_port", name)
    pin = pick("GPUPROV_PVE_FINGERPRINT", "pve_fingerprint")
    ca_file = pick(None, "pve_ca_file")
    return PveSettings(
        name=name, host=pick(None, "pve_api_host", "ansible_host") or name,
        node=pick(None, "pve_node") or name, port=port,
        fingerprint=parse_pin(pin, "pve_fingerprint") if pin else None,
        ca_file=Path(ca_file).expanduser() if ca_file else None, **login)


def _pinned_sha256(settings: PveSettings) -> str:
    """The server's certificate checked against the pin; its SHA-256 for the session to
    enforce on every connection (urllib3 checks it right after each handshake)."""
    try:
        der = peer_certificate(settings.host, settings.port, unverified_context())
    except OSError as error:
        raise _unreachable(settings, error) from None
    if not matches(der, settings.fingerprint or ""):
        raise HostUnreachable(
            f"the certificate of {settings.endpoint} does not match pve_fingerprint of "
            f"{settings.name} (it presents {_colons(fingerprint(der))} as SHA-256)",
            "if the node's certificate was replaced on purpose, update pve_fingerprint; "
            "otherwise something is intercepting the connection")
    return fingerprint(der)


def _check_trusted(settings: PveSettings) -> None:
    """A handshake with the verification requests will do, for a message that says what to do
    when the certificate is self-signed (as every fresh PVE node's is)."""
    context = ssl.create_default_context(
        cafile=str(settings.ca_file) if settings.ca_file else None)
    try:
        peer_certificate(settings.host, settings.port, context)
    except ssl.SSLCertVerificationError as error:
        seen = fingerprint(peer_certificate(settings.host, settings.port, unverified_context()))
        raise HostUnreachable(
            f"the certificate of {settings.endpoint} is not trusted: {error.verify_message}",
            f"give its CA with pve_ca_file (/etc/pve/pve-root-ca.pem on the node), or pin this "
            f"certificate with pve_fingerprint={_colons(seen)} (compare it with the node's "
            "Certificates panel first)") from None
    except OSError as error:
        raise _unreachable(settings, error) from None


def _colons(hex_digest: str) -> str:
    return ":".join(hex_digest[i:i + 2] for i in range(0, len(hex_digest), 2)).upper()


def _unreachable(settings: PveSettings, error: Exception) -> HostUnreachable:
    return HostUnreachable(f"cannot reach the Proxmox VE API at {settings.endpoint}: "
                           f"{settings.redact(str(error))}",
                           f"check pve_api_host/pve_api_port of {settings.name}")


def connect(settings: PveSettings):
    """A logged-in proxmoxer resource for ``/api2/json``; HostUnreachable (exit 4) on TLS,
    network or login failures, never quoting a secret."""
    import requests
    from proxmoxer.backends.https import (
        JsonSerializer,
        ProxmoxHTTPApiTokenAuth,
        ProxmoxHTTPAuthBase,
        ProxmoxHttpSession,
    )
    from proxmoxer.core import ProxmoxResource, ResourceException
    from requests.adapters import HTTPAdapter
    from requests.cookies import cookiejar_from_dict

    base_url = f"https://{settings.host}:{settings.port}/api2/json"
    session = ProxmoxHttpSession()
    if settings.fingerprint:
        pin = _pinned_sha256(settings)

        class PinnedAdapter(HTTPAdapter):
            def init_poolmanager(self, *args, **kwargs):
                kwargs["assert_fingerprint"] = pin
                super().init_poolmanager(*args, **kwargs)

        session.mount(f"https://{settings.host}:{settings.port}", PinnedAdapter())
        # The chain is not checked because the pin replaces it: every connection of this
        # session must present exactly the pinned certificate, or no byte is sent.
        verify: bool | str = False
    else:
        _check_trusted(settings)
        verify = str(settings.ca_file) if settings.ca_file else True

    if settings.is_token:
        auth = ProxmoxHTTPApiTokenAuth(settings.user, settings.token_name, settings.token_secret,
                                       verify_ssl=verify, timeout=60)
    else:
        # proxmoxer's own password login posts outside the session (and its pin); log in here.
        class TicketAuth(ProxmoxHTTPAuthBase):
            def __init__(self, ticket: str, csrf: str) -> None:
                super().__init__(verify_ssl=verify, timeout=60)
                self.ticket, self.csrf = ticket, csrf

            def get_cookies(self):
                return cookiejar_from_dict({"PVEAuthCookie": self.ticket})

            def __call__(self, req):
                if req.method != "GET":
                    req.headers["CSRFPreventionToken"] = self.csrf
                return req

        try:
            response = requests.Session.request(
                session, "POST", f"{base_url}/access/ticket", verify=verify, timeout=60,
                data={"username": settings.user, "password": settings.password})
        except requests.RequestException as error:
            raise _unreachable(settings, error) from None
        if response.status_code != 200:
            raise HostUnreachable(f"Proxmox VE at {settings.endpoint} refused the login of "
                                  f"{settings.user!r} (HTTP {response.status_code})",
                                  "check pve_user / pve_password (or GPUPROV_PVE_USER / "
                                  "GPUPROV_PVE_PASSWORD)")
        data = response.json()["data"]
        auth = TicketAuth(data["ticket"], data["CSRFPreventionToken"])
    session.auth = auth
    api = ProxmoxResource(base_url=base_url, session=session, serializer=JsonSerializer())
    try:
        api.version.get()
    except requests.RequestException as error:
        raise _unreachable(settings, error) from None
    except ResourceException as error:  # the token was refused
        detail = settings.redact(str(error.content or error.status_message).strip())
        raise HostUnreachable(f"Proxmox VE at {settings.endpoint} refused {settings.identity}: "
                              f"{detail} (HTTP {error.status_code})",
                              "check pve_token (or GPUPROV_PVE_TOKEN) and the token's "
                              "privileges") from None
    return api
