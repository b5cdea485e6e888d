"""A development PKI: a CA, a server certificate and a client certificate.

Certificates carry the extensions real validators check (basic constraints,
key usage, extended key usage, subject and authority key identifiers), so the
TLS stack treats them like certificates from a real private CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pixelgate.dev import DEV_CLIENT_ID
from pixelgate.dev.tokens import generate_signing_key, write_signing_key_pair

SERVER_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
"""Names the development server certificate is valid for."""

_DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def certificate_pem(self) -> bytes:
        """The certificate, PEM-encoded."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The private key, unencrypted PKCS#8 PEM."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pixelgate development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity(
    not_before: dt.datetime | None, not_after: dt.datetime | None, days: int
) -> tuple[dt.datetime, dt.datetime]:
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    return start, not_after or start + days * _DAY


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    # EC keys sign (TLS handshakes, certificates); they never encipher.
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(
    common_name: str = "pixelgate development CA",
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """Creates a self-signed CA that may sign end-entity certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(not_before, not_after, days=3650)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
        .sign(key, hashes.SHA256())
    )
    return Issued(certificate, key)


def _general_names(names: Iterable[str]) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = []
    for name in names:
        if "://" in name:
            result.append(x509.UniformResourceIdentifier(name))
            continue
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result


def issue_certificate(
    ca: Issued,
    common_name: str,
    *,
    subject_alt_names: Sequence[str],
    usages: Sequence[x509.ObjectIdentifier],
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """Issues an end-entity certificate signed by `ca`.

    `subject_alt_names` holds DNS names, IP addresses and URIs (such as SPIFFE
    IDs); `usages` the extended key usages (serverAuth, clientAuth).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(not_before, not_after, days=825)
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(x509.SubjectAlternativeName(_general_names(subject_alt_names)), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value), False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(certificate, key)


def load_issued(certificate_file: Path, key_file: Path) -> Issued:
    """Reads back an issued certificate and its key (a CA's, to issue more from it)."""
    certificate = x509.load_pem_x509_certificate(certificate_file.read_bytes())
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_file} does not hold an EC private key")
    return Issued(certificate, key)


def issue_server_certificate(ca: Issued, names: Sequence[str] = SERVER_NAMES) -> Issued:
    """Issues a serverAuth certificate for `names` (DNS names and IP addresses)."""
    return issue_certificate(
        ca, names[0], subject_alt_names=names, usages=[ExtendedKeyUsageOID.SERVER_AUTH]
    )


def issue_client_certificate(
    ca: Issued,
    spiffe_id: str = DEV_CLIENT_ID,
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """Issues a clientAuth certificate whose identity is a SPIFFE-style URI SAN."""
    return issue_certificate(
        ca,
        spiffe_id.rsplit("/", 1)[-1],
        subject_alt_names=[spiffe_id],
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
        not_before=not_before,
        not_after=not_after,
    )


def _write(path: Path, data: bytes, *, private: bool) -> None:
    # Private keys are created 0600 from the start, never chmod-ed after the fact.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


@dataclass(frozen=True)
class DevPkiFiles:
    """Where the development PKI's files live."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    signing_key: Path
    verification_key: Path

    @classmethod
    def at(cls, directory: Path) -> DevPkiFiles:
        """The file set under `directory`."""
        return cls(
            ca_cert=directory / "ca.crt",
            ca_key=directory / "ca.key",
            server_cert=directory / "server.crt",
            server_key=directory / "server.key",
            client_cert=directory / "client.crt",
            client_key=directory / "client.key",
            signing_key=directory / "token-signing.key",
            verification_key=directory / "token-signing.pub",
        )

    def complete(self) -> bool:
        """True when every file exists."""
        return all(path.is_file() for path in astuple(self))


def write_dev_pki(directory: Path, *, force: bool = False) -> DevPkiFiles:
    """Writes the development CA, server and client certificates and token keys.

    Idempotent: an existing complete set is kept unless `force` is true.
    """
    files = DevPkiFiles.at(directory)
    if files.complete() and not force:
        return files
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca()
    server = issue_server_certificate(ca)
    client = issue_client_certificate(ca)
    for issued, cert_path, key_path in (
        (ca, files.ca_cert, files.ca_key),
        (server, files.server_cert, files.server_key),
        (client, files.client_cert, files.client_key),
    ):
        _write(key_path, issued.key_pem, private=True)
        _write(cert_path, issued.certificate_pem, private=False)
    write_signing_key_pair(generate_signing_key(), files.signing_key, files.verification_key)
    return files


__all__ = [
    "SERVER_NAMES",
    "DevPkiFiles",
    "Issued",
    "issue_certificate",
    "issue_client_certificate",
    "issue_server_certificate",
    "load_issued",
    "make_ca",
    "write_dev_pki",
]
