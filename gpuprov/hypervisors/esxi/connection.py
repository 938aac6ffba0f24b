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

import hashlib
import hmac
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gpuprov.errors import HostUnreachable, UsageError

_DIGESTS = {40: "sha1", 64: "sha256", 128: "sha512"}


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


def _pin(text: str) -> str:
    pin = text.replace(":", "").strip().lower()
    if len(pin) not in _DIGESTS or any(c not in "0123456789abcdef" for c in pin):
        raise UsageError(f"vsphere_thumbprint {text!r} is not a certificate thumbprint",
                         "give the SHA-256 (or SHA-1) fingerprint of the server's certificate in "
                         "hex, for example from: openssl x509 -noout -fingerprint -sha256")
    return pin


def settings_from(name: str, variables: Mapping, environ: Mapping[str, str]) -> VsphereSettings:
    """The endpoint and login of inventory entry ``name``; the environment wins over the vars."""

    def pick(env: str | None, *names: str) -> str | None:
        if env and environ.get(env):
            return environ[env]
        for var in names:
            value = variables.get(var)
            if value not in (None, ""):
                return str(value)
        return None

    user = pick("GPUPROV_VSPHERE_USER", "vsphere_user")
    password = pick("GPUPROV_VSPHERE_PASSWORD", "vsphere_password")
    if not user or not password:
        missing = "user" if not user else "password"
        raise UsageError(f"no vSphere {missing} for {name}",
                         "set vsphere_user and vsphere_password for the host in the inventory "
                         "(a vault keeps the password), or GPUPROV_VSPHERE_USER and "
                         "GPUPROV_VSPHERE_PASSWORD in the environment")
    port = pick(None, "vsphere_port") or "443"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"vsphere_port {port!r} of {name} is not a port number")
    thumbprint = pick("GPUPROV_VSPHERE_THUMBPRINT", "vsphere_thumbprint")
    ca_file = pick(None, "vsphere_ca_file")
    return VsphereSettings(
        name=name, host=pick(None, "vsphere_host", "ansible_host") or name, port=int(port),
        user=user, password=password, thumbprint=_pin(thumbprint) if thumbprint else None,
        ca_file=Path(ca_file).expanduser() if ca_file else None)


def fingerprint(der: bytes, algorithm: str = "sha256") -> str:
    return hashlib.new(algorithm, der).hexdigest()


def _handshake(settings: VsphereSettings, context: ssl.SSLContext) -> bytes:
    """One TLS handshake with ``context``; the server's certificate (DER)."""
    try:
        with socket.create_connection((settings.host, settings.port), timeout=15) as raw, \
                context.wrap_socket(raw, server_hostname=settings.host) as tls:
            return tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError as error:
        unverified = _unverified()
        seen = fingerprint(_handshake(settings, unverified))
        raise HostUnreachable(
            f"the certificate of {settings.endpoint} is not trusted: {error.verify_message}",
            f"give its CA with vsphere_ca_file, or pin this certificate with "
            f"vsphere_thumbprint={seen} (SHA-256; compare it with the host's console first)"
        ) from None
    except OSError as error:
        raise HostUnreachable(f"cannot reach vSphere at {settings.endpoint}: {error}",
                              f"check vsphere_host/vsphere_port of {settings.name}") from None


def _unverified() -> ssl.SSLContext:
    # Only ever used to read a certificate that is then compared with the pin, or shown.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def ssl_context(settings: VsphereSettings) -> ssl.SSLContext:
    """A context that verifies the server: against the pin (that certificate and no other),
    else the CA file, else the system's CAs. pyVmomi skips verification for 127.0.0.1 and
    localhost unless it is handed a context, so one is always handed."""
    if settings.thumbprint is None:
        context = ssl.create_default_context(
            cafile=str(settings.ca_file) if settings.ca_file else None)
        return context
    der = _handshake(settings, _unverified())
    seen = fingerprint(der, _DIGESTS[len(settings.thumbprint)])
    if not hmac.compare_digest(seen, settings.thumbprint):
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
