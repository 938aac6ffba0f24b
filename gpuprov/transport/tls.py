"""Certificate pins for hypervisor APIs with self-signed certificates (ESXi, Proxmox VE).

A pin is the hex digest of the server's certificate (SHA-1, SHA-256 or SHA-512, colons allowed,
as ``openssl x509 -fingerprint`` and the Proxmox GUI print it). Reading the certificate to compare
it is the only use of an unverified handshake; what is then trusted is that certificate alone.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import ssl

from gpuprov.errors import UsageError

DIGESTS = {40: "sha1", 64: "sha256", 128: "sha512"}


def parse_pin(text: str, setting: str) -> str:
    """``AB:CD:...`` -> ``abcd...``; UsageError naming ``setting`` if it is not a digest."""
    pin = text.replace(":", "").strip().lower()
    if len(pin) not in DIGESTS or any(c not in "0123456789abcdef" for c in pin):
        raise UsageError(f"{setting} {text!r} is not a certificate fingerprint",
                         "give the SHA-256 (or SHA-1) fingerprint of the server's certificate in "
                         "hex, for example from: openssl x509 -noout -fingerprint -sha256")
    return pin


def fingerprint(der: bytes, algorithm: str = "sha256") -> str:
    return hashlib.new(algorithm, der).hexdigest()


def matches(der: bytes, pin: str) -> bool:
    return hmac.compare_digest(fingerprint(der, DIGESTS[len(pin)]), pin)


def unverified_context() -> ssl.SSLContext:
    # Only ever used to read a certificate that is then compared with a pin, or shown.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def peer_certificate(host: str, port: int, context: ssl.SSLContext,
                     timeout: float = 15) -> bytes:
    """One TLS handshake with ``context``; the server's certificate (DER). Raises OSError
    (ssl.SSLCertVerificationError when ``context`` does not trust it)."""
    with socket.create_connection((host, port), timeout=timeout) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        return tls.getpeercert(binary_form=True)
