"""Mutual TLS: the server's credentials and the caller's certificate identity.

There is no plaintext port: the server only ever listens with these
credentials, and the TLS handshake refuses any client without a certificate
that chains to the configured CA.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from pixelgate.server.config import TlsSettings


class TlsConfigError(ValueError):
    """A TLS file is missing or unreadable; the message says which."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(
            f"cannot read the {what} {path}: {exc.strerror}"
            " (`make certs` creates a development set)"
        ) from None


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """Credentials that present the server certificate and require a client certificate."""
    return grpc.ssl_server_credentials(
        [(_read(tls.key_file, "server private key"), _read(tls.cert_file, "server certificate"))],
        root_certificates=_read(tls.client_ca_file, "client CA bundle"),
        require_client_auth=True,
    )


@functools.lru_cache(maxsize=4096)
def _identity_of(pem: bytes) -> str | None:
    certificate = x509.load_pem_x509_certificate(pem)
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = None
    if names is not None:
        uris = [u for u in names.get_values_for_type(x509.UniformResourceIdentifier)]
        spiffe = [u for u in uris if u.startswith("spiffe://")]
        if spiffe:
            return spiffe[0]
        dns = names.get_values_for_type(x509.DNSName)
        if dns:
            return dns[0]
    common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common_names[0].value) if common_names else None


def certificate_identity(auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
    """The peer's identity from its verified certificate: SPIFFE URI, else DNS SAN, else CN."""
    pems = list(auth_context.get("x509_pem_cert", ()))
    if not pems:
        return None
    return _identity_of(pems[0])


__all__ = ["TlsConfigError", "certificate_identity", "server_credentials"]
