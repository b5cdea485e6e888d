"""The run's identities: a fresh dev PKI, bad certificates, and tokens that are remembered.

Every token minted and every prompt sent is kept, so the log scan can prove
that none of them reached a log line.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from pixelgate.dev import DEV_CLIENT_ID
from pixelgate.dev.pki import (
    DevPkiFiles,
    Issued,
    issue_certificate,
    issue_client_certificate,
    make_ca,
    write_dev_pki,
)
from pixelgate.dev.tokens import ALL_SCOPES, load_signing_key, mint_access_token


@dataclass(frozen=True)
class TlsIdentity:
    """A client certificate and key on disk."""

    cert_file: Path
    key_file: Path


class Identities:
    """The dev PKI of this run, the tokens minted and the prompts used in it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pki: DevPkiFiles = write_dev_pki(directory / "pki")
        self._signing_key = load_signing_key(self.pki.signing_key)
        self._lock = threading.Lock()
        self.tokens: list[str] = []
        self.prompts: list[str] = []

    def mint(self, subject: str, scopes: Iterable[str] = ALL_SCOPES, **claims: Any) -> str:
        """A valid access token for `subject`, remembered for the log scan."""
        token = mint_access_token(self._signing_key, subject=subject, scopes=scopes, **claims)
        with self._lock:
            self.tokens.append(token)
        return token

    def prompt(self, text: str) -> str:
        """`text` with a unique marker, remembered: no log may ever hold it."""
        marked = f"{text} prove-{secrets.token_hex(6)}"
        with self._lock:
            self.prompts.append(marked)
        return marked

    def key_fragments(self) -> list[str]:
        """A distinctive slice of each private key's PEM body (no log may hold any)."""
        fragments = []
        for path in (
            self.pki.ca_key,
            self.pki.server_key,
            self.pki.client_key,
            self.pki.signing_key,
        ):
            body = "".join(path.read_text().splitlines()[1:-1])
            fragments.append(body[20:60])
        return fragments

    def _write(self, name: str, issued: Issued) -> TlsIdentity:
        cert_file = self.directory / f"{name}.crt"
        key_file = self.directory / f"{name}.key"
        cert_file.write_bytes(issued.certificate_pem)
        key_file.write_bytes(issued.key_pem)
        key_file.chmod(0o600)
        return TlsIdentity(cert_file, key_file)

    def _server_ca(self) -> Issued:
        certificate = x509.load_pem_x509_certificate(self.pki.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(self.pki.ca_key.read_bytes(), password=None)
        return Issued(certificate, key)  # type: ignore[arg-type]

    def foreign_client(self) -> TlsIdentity:
        """A client certificate from a CA the server does not trust."""
        return self._write("foreign", issue_client_certificate(make_ca("another CA")))

    def expired_client(self) -> TlsIdentity:
        """A client certificate from the server's own CA that expired yesterday."""
        now = dt.datetime.now(dt.UTC)
        issued = issue_client_certificate(
            self._server_ca(),
            not_before=now - dt.timedelta(days=30),
            not_after=now - dt.timedelta(days=1),
        )
        return self._write("expired", issued)

    def server_auth_only_client(self) -> TlsIdentity:
        """A certificate from the server's CA meant for servers (serverAuth), not clients."""
        issued = issue_certificate(
            self._server_ca(),
            "wrong-purpose",
            subject_alt_names=[DEV_CLIENT_ID],
            usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        )
        return self._write("wrong-purpose", issued)


__all__ = ["Identities", "TlsIdentity"]
