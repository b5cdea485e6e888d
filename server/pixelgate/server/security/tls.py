"""Mutual TLS: the server's credentials.

There is no plaintext port: the server only ever listens with these
credentials, and the TLS handshake refuses any client without a certificate
that chains to the configured CA.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from pixelgate.server.core.config import TlsSettings


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


__all__ = ["TlsConfigError", "server_credentials"]
