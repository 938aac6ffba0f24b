"""Connecting to an ESXi host or a vCenter: endpoint and login from the inventory or the
environment, TLS verified by default (the system's CAs, a CA file, or a pinned certificate
thumbprint), and secrets kept out of every message.

Inventory variables of the ``--host`` entry: ``vsphere_host`` (else ``ansible_host``, else the
entry's name), ``vsphere_port`` (443), ``vsphere_user``, ``vsphere_password``,
``vsphere_thumbprint`` (SHA-1, SHA-256 or SHA-512 of the server's certificate, hex, colons
allowed), ``vsphere_ca_file``. The environment overrides them: ``GPUPROV_VSPHERE_USER``,
``GPUPROV_VSPHERE_PASSWORD``, ``GPUPROV_VSPHERE_THUMBPRINT``.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class VsphereSettings:
    name: str  # the inventory entry
    host: str
    port: int = 443
    user: str = ""
    password: str = field(default="", repr=False)
    thumbprint: str | None = None  # lower-case hex, no colons
    ca_file: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def redact(self, text: str) -> str:
        """``text`` with the password replaced: for any message that quotes the server."""
        return text.replace(self.password, "********") if self.password else text


def settings_from(name: str, variables: Mapping, environ: Mapping[str, str]) -> VsphereSettings:
    """The endpoint and login of inventory entry ``name``; the environment wins over the vars."""
    pick = picker(variables, environ)
    user = pick("GPUPROV_VSPHERE_USER", "vsphere_user")
    password = pick("GPUPROV_VSPHERE_PASSWORD", "vsphere_password")
    if not user or not password:
        missing = "user" if not user else "password"
        raise UsageError(f"no vSphere {missing} for {name}",
                         "set vsphere_user and vsphere_password for the host in the inventory "
                         "(a vault keeps the password), or GPUPROV_VSPHERE_USER and "
                         "GPUPROV_VSPHERE_PASSWORD in the environment")
    port = port_number(pick(None, "vsphere_port") or "443", "vsphere_port", name)
    thumbprint = pick("GPUPROV_VSPHERE_THUMBPRINT", "vsphere_thumbprint")
    ca_file = pick(None, "vsphere_ca_file")
    return VsphereSettings(
        name=name, host=pick(None, "vsphere_host", "ansible_host") or name, port=port,
        user=user, password=password,
        thumbprint=parse_pin(thumbprint, "vsphere_thumbprint") if thumbprint else None,
        ca_file=Path(ca_file).expanduser() if ca_file else None)


def _handshake(settings: VsphereSettings, context: ssl.SSLContext) -> bytes:
    """One TLS handshake with ``context``; the server's certificate (DER)."""
    try:
        return peer_certificate(settings.host, settings.port, context)
    except ssl.SSLCertVerificationError as error:
        seen = fingerprint(_handshake(settings, unverified_context()))
        raise HostUnreachable(
            f"the certificate of {settings.endpoint} is not trusted: {error.verify_message}",
            f"give its CA with vsphere_ca_file, or pin this certificate with "
            f"vsphere_thumbprint={seen} (SHA-256; compare it with the host's console first)"
        ) from None
    except OSError as error:
        raise HostUnreachable(f"cannot reach vSphere at {settings.endpoint}: {error}",
                              f"check vsphere_host/vsphere_port of {settings.name}") from None


def ssl_context(settings: VsphereSettings) -> ssl.SSLContext:
    """A context that verifies the server: against the pin (that certificate and no other),
    else the CA file, else the system's CAs. pyVmomi skips verification for 127.0.0.1 and
    localhost unless it is handed a context, so one is always handed."""
    if settings.thumbprint is None:
        context = ssl.create_default_context(
            cafile=str(settings.ca_file) if settings.ca_file else None)
        return context
    der = _handshake(settings, unverified_context())
    if not matches(der, settings.thumbprint):
        raise HostUnreachable(
            f"the certificate of {settings.endpoint} does not match vsphere_thumbprint of "
            f"{settings.name} (it presents {fingerprint(der)} as SHA-256)",
            "if the host's certificate was replaced on purpose, update vsphere_thumbprint; "
            "otherwise something is intercepting the connection")
    # Trust exactly this certificate for the session: every connection pyVmomi opens is then
    # verified by OpenSSL against it, with no window between checking and using.
    context = ssl.create_default_context(cadata=ssl.DER_cert_to_PEM_cert(der))
    context.check_hostname = False  # the pin names the server, not its DNS name
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def connect(settings: VsphereSettings):
    """A logged-in pyVmomi ServiceInstance; HostUnreachable (exit 4) on TLS, network or login
    failures, never quoting the password."""
    from pyVim.connect import SmartConnect
    from pyVmomi import vim

    context = ssl_context(settings)
    _handshake(settings, context)  # a clear message for TLS trouble, before pyVmomi's own
    try:
        return SmartConnect(host=settings.host, port=settings.port, user=settings.user,
                            pwd=settings.password, sslContext=context,
                            httpConnectionTimeout=60)
    except vim.fault.InvalidLogin:
        raise HostUnreachable(f"vSphere at {settings.endpoint} refused the login of user "
                              f"{settings.user!r}",
                              "check vsphere_user / vsphere_password "
                              "(or GPUPROV_VSPHERE_USER / GPUPROV_VSPHERE_PASSWORD)") from None
    except Exception as error:  # SmartConnect raises a bare Exception when no API answers
        raise HostUnreachable(f"no vSphere API at {settings.endpoint}: "
                              f"{settings.redact(str(error))}",
                              f"check vsphere_host/vsphere_port of {settings.name}") from None
