"""Refused at the TLS layer: bad client certificates, and a server name that does not match.

Each refusal is checked twice: through the Python client (pixelgate.client.Unavailable)
and through a raw gRPC call (UNAVAILABLE). Every call carries a timeout so that a
handshake that never completes fails the test instead of hanging it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pixelgate.client import PixelgateClient, Unavailable
from pixelgate.dev import DEV_CLIENT_ID
from pixelgate.dev.pki import Issued, issue_certificate, issue_client_certificate, make_ca

TIMEOUT = 5.0

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server_ca(pki) -> Issued:
    """The CA the test server trusts, with its key, to issue (bad) client certificates."""
    certificate = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    return Issued(certificate, key)  # type: ignore[arg-type]


@pytest.fixture
def write_identity(tmp_path: Path) -> Callable[[Issued], tuple[Path, Path]]:
    """Writes a certificate and key to files, returning (cert_file, key_file)."""
    counter = iter(range(1000))

    def _write(issued: Issued) -> tuple[Path, Path]:
        n = next(counter)
        cert_file, key_file = tmp_path / f"client-{n}.crt", tmp_path / f"client-{n}.key"
        cert_file.write_bytes(issued.certificate_pem)
        key_file.write_bytes(issued.key_pem)
        return cert_file, key_file

    return _write


def _raw_health(
    target: str,
    pki,
    cert_file: Path,
    key_file: Path,
    options: list[tuple[str, str]] | None = None,
) -> str:
    credentials = grpc.ssl_channel_credentials(
        pki.ca_cert.read_bytes(), key_file.read_bytes(), cert_file.read_bytes()
    )
    with grpc.secure_channel(target, credentials, options=options or []) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=TIMEOUT
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def _assert_refused(
    server, pki, mint, cert_file: Path, key_file: Path, server_name: str | None = None
) -> None:
    """Both the Python client and a raw gRPC call are refused with UNAVAILABLE."""
    with (
        PixelgateClient(
            server.target,
            ca_file=pki.ca_cert,
            cert_file=cert_file,
            key_file=key_file,
            token=mint(),
            server_name=server_name,
        ) as client,
        pytest.raises(Unavailable),
    ):
        client.list_models(timeout=TIMEOUT)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else None
    with pytest.raises(grpc.RpcError) as caught:
        _raw_health(server.target, pki, cert_file, key_file, options)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_dev_client_certificate_is_accepted(server, pki, connect):
    """Positive control: the dev client certificate gets through, raw and via the client."""
    assert _raw_health(server.target, pki, pki.client_cert, pki.client_key) == "SERVING"
    assert connect(server).list_models(timeout=TIMEOUT)


def test_a_fresh_certificate_from_the_server_ca_is_accepted(server, pki, server_ca, write_identity):
    """Positive control: a fresh clientAuth certificate from the server's CA is accepted."""
    cert_file, key_file = write_identity(issue_client_certificate(server_ca))
    assert _raw_health(server.target, pki, cert_file, key_file) == "SERVING"


def test_an_expired_client_certificate_is_refused(server, pki, mint, server_ca, write_identity):
    """A client certificate past its notAfter, even from the right CA, cannot connect."""
    now = dt.datetime.now(dt.UTC)
    expired = issue_client_certificate(
        server_ca, not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
    )
    _assert_refused(server, pki, mint, *write_identity(expired))


def test_a_not_yet_valid_client_certificate_is_refused(
    server, pki, mint, server_ca, write_identity
):
    """A client certificate whose notBefore lies in the future cannot connect."""
    now = dt.datetime.now(dt.UTC)
    early = issue_client_certificate(
        server_ca, not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=30)
    )
    _assert_refused(server, pki, mint, *write_identity(early))


def test_a_self_signed_ca_certificate_is_refused(server, pki, mint, write_identity):
    """A self-signed (CA) certificate presented as the client's own cannot connect."""
    _assert_refused(server, pki, mint, *write_identity(make_ca("self-signed client")))


def test_a_self_signed_end_entity_certificate_is_refused(server, pki, mint, write_identity):
    """An end-entity clientAuth certificate signed by its own key cannot connect."""
    own = make_ca("self-issuer")  # only for its key and name
    ski = x509.SubjectKeyIdentifier.from_public_key(own.key.public_key())
    name = own.certificate.subject
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(own.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
        .not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(DEV_CLIENT_ID)]),
            critical=False,
        )
        .add_extension(ski, critical=False)
        .sign(own.key, hashes.SHA256())
    )
    _assert_refused(server, pki, mint, *write_identity(Issued(certificate, own.key)))


def test_a_certificate_from_another_ca_is_refused(server, pki, mint, write_identity):
    """A well-formed clientAuth certificate from a CA the server does not trust cannot connect."""
    stranger = issue_client_certificate(make_ca("some other CA"))
    _assert_refused(server, pki, mint, *write_identity(stranger))


def test_a_server_auth_only_certificate_is_refused(server, pki, mint, server_ca, write_identity):
    """A certificate from the right CA whose EKU allows only serverAuth cannot act as a client."""
    server_only = issue_certificate(
        server_ca,
        "dev",
        subject_alt_names=[DEV_CLIENT_ID],
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
    )
    _assert_refused(server, pki, mint, *write_identity(server_only))


def test_dialling_a_name_the_server_certificate_does_not_hold_fails(server, pki, mint):
    """A client expecting "not-the-server.example" refuses the server's certificate."""
    # Control: the override itself works with a name the certificate does hold.
    options = [("grpc.ssl_target_name_override", "localhost")]
    assert _raw_health(server.target, pki, pki.client_cert, pki.client_key, options) == "SERVING"
    _assert_refused(
        server, pki, mint, pki.client_cert, pki.client_key, server_name="not-the-server.example"
    )
