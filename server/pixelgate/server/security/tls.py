"""Mutual TLS: the server's certificate, key and client CA, read and checked.

There is no plaintext port: the server only ever listens with this material,
and the TLS handshake refuses any client without a certificate that chains to
the configured CA. The material is checked before it is served (it parses, the
key matches the certificate), so a bad file set never reaches a handshake.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pixelgate.server.core.config import TlsSettings


class TlsConfigError(ValueError):
    """A TLS file is missing, unreadable or unusable; the message says which (never its content)."""


@dataclass(frozen=True)
class TlsMaterial:
    """A checked set: the server's key and certificate chain, and the client CA bundle."""

    key_pem: bytes
    certificate_chain_pem: bytes
    client_ca_pem: bytes
    certificate: x509.Certificate
    """The server's own (leaf) certificate."""
    client_cas: tuple[x509.Certificate, ...]

    def certificate_configuration(self) -> grpc.ServerCertificateConfiguration:
        """What grpc serves new handshakes with."""
        return grpc.ssl_server_certificate_configuration(
            [(self.key_pem, self.certificate_chain_pem)], root_certificates=self.client_ca_pem
        )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(
            f"cannot read the {what} {path}: {exc.strerror}"
            " (`make certs` creates a development set)"
        ) from None


def _certificates(data: bytes, path: Path, what: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise TlsConfigError(f"the {what} {path} holds no PEM certificate")
    return certificates


def _public_key_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_tls_material(tls: TlsSettings) -> TlsMaterial:
    """Reads and checks the files `tls` names; raises TlsConfigError if any is unusable."""
    key_pem = _read(tls.key_file, "server private key")
    chain_pem = _read(tls.cert_file, "server certificate")
    ca_pem = _read(tls.client_ca_file, "client CA bundle")
    chain = _certificates(chain_pem, tls.cert_file, "server certificate")
    cas = _certificates(ca_pem, tls.client_ca_file, "client CA bundle")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):  # the library's message is dropped: it may quote the file
        raise TlsConfigError(
            f"the server private key {tls.key_file} is not an unencrypted PEM private key"
        ) from None
    if _public_key_der(key.public_key()) != _public_key_der(chain[0].public_key()):
        raise TlsConfigError(
            f"the server private key {tls.key_file} does not match the certificate {tls.cert_file}"
        )
    return TlsMaterial(key_pem, chain_pem, ca_pem, chain[0], tuple(cas))


__all__ = ["TlsConfigError", "TlsMaterial", "load_tls_material"]
