"""The caller's certificate identity, and access tokens bound to it.

The identity comes from the client certificate the TLS handshake verified:
its SPIFFE URI SAN, else its first DNS SAN, else its subject CN. A token
carrying `cnf.x5t#S256` (RFC 8705 section 3) is accepted only over a session
whose client certificate has that SHA-256 thumbprint, so a stolen bound token
is useless without the client's private key.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from pixelgate.server.core.errors import PermissionDenied, Unauthenticated
from pixelgate.server.security.token_verifier import VerifiedToken


@dataclass(frozen=True)
class ClientCertificate:
    """What the server knows of the caller's verified certificate."""

    identity: str | None
    """SPIFFE ID, else DNS name, else common name."""
    thumbprint: str
    """base64url SHA-256 of the DER certificate, as in `x5t#S256`."""


def certificate_thumbprint(certificate: x509.Certificate) -> str:
    """The RFC 8705 `x5t#S256` value of `certificate`."""
    digest = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def certificate_identity(certificate: x509.Certificate) -> str | None:
    """SPIFFE URI SAN, else the first DNS SAN, else the subject CN."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = None
    if names is not None:
        spiffe = [
            uri
            for uri in names.get_values_for_type(x509.UniformResourceIdentifier)
            if uri.startswith("spiffe://")
        ]
        if spiffe:
            return spiffe[0]
        dns = names.get_values_for_type(x509.DNSName)
        if dns:
            return dns[0]
    common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common_names[0].value) if common_names else None


@functools.lru_cache(maxsize=4096)
def _parse(pem: bytes) -> ClientCertificate:
    certificate = x509.load_pem_x509_certificate(pem)
    return ClientCertificate(certificate_identity(certificate), certificate_thumbprint(certificate))


def client_certificate(auth_context: Mapping[str, Iterable[bytes]]) -> ClientCertificate | None:
    """The peer's certificate from a call's auth context (None without TLS client auth)."""
    pems = list(auth_context.get("x509_pem_cert", ()))
    return _parse(pems[0]) if pems else None


class BindingPolicy:
    """Which certificates may call, and how tokens must relate to them."""

    def __init__(
        self,
        *,
        require_bound_tokens: bool = False,
        certificate_must_match: Literal["none", "sub", "client_id"] = "none",
        allowed_identities: Iterable[str] = (),
    ) -> None:
        self._require_bound = require_bound_tokens
        self._must_match = certificate_must_match
        self._allowed = frozenset(allowed_identities)

    def admit_certificate(self, certificate: ClientCertificate | None) -> None:
        """PERMISSION_DENIED unless the certificate identity is allowed."""
        if self._allowed and (certificate is None or certificate.identity not in self._allowed):
            raise PermissionDenied("client certificate identity is not allowed")

    def check(self, token: VerifiedToken, certificate: ClientCertificate | None) -> None:
        """UNAUTHENTICATED when the token is not bound as policy requires."""
        if token.certificate_thumbprint is not None:
            if certificate is None or not hmac.compare_digest(
                token.certificate_thumbprint, certificate.thumbprint
            ):
                raise Unauthenticated("access token is bound to another client certificate")
        elif self._require_bound:
            raise Unauthenticated("access token must be bound to the client certificate")
        if self._must_match != "none":
            claimed = token.subject if self._must_match == "sub" else token.client_id
            if certificate is None or claimed != certificate.identity:
                raise Unauthenticated(
                    f"access token {self._must_match} does not match the client certificate"
                )


__all__ = [
    "BindingPolicy",
    "ClientCertificate",
    "certificate_identity",
    "certificate_thumbprint",
    "client_certificate",
]
