"""Mutual TLS: only clients with a certificate from the trusted CA get through."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pixelgate.client import PixelgateClient, Unavailable
from pixelgate.dev.pki import issue_client_certificate, make_ca


def _health(target: str, credentials: grpc.ChannelCredentials) -> str:
    with grpc.secure_channel(target, credentials) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def test_health_needs_a_client_certificate_but_no_token(server, pki):
    """Health answers any mTLS client, token or not."""
    credentials = grpc.ssl_channel_credentials(
        pki.ca_cert.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    assert _health(server.target, credentials) == "SERVING"


def test_a_client_without_a_certificate_is_refused(server, pki):
    """TLS without a client certificate fails the handshake: nothing is served."""
    credentials = grpc.ssl_channel_credentials(pki.ca_cert.read_bytes())
    with pytest.raises(grpc.RpcError) as caught:
        _health(server.target, credentials)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_from_another_ca_is_refused(server, pki, mint, tmp_path):
    """A client certificate the server's CA did not sign is refused, even with a valid token."""
    stranger = issue_client_certificate(make_ca("some other CA"))
    (tmp_path / "c.crt").write_bytes(stranger.certificate_pem)
    (tmp_path / "c.key").write_bytes(stranger.key_pem)
    client = PixelgateClient(
        server.target,
        ca_file=pki.ca_cert,
        cert_file=tmp_path / "c.crt",
        key_file=tmp_path / "c.key",
        token=mint(),
    )
    with client, pytest.raises(Unavailable):
        client.list_models()


def test_plaintext_is_not_served(server):
    """There is no plaintext port: an insecure channel cannot call anything."""
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_client_refuses_a_server_not_signed_by_its_ca(server, pki, mint, tmp_path):
    """The client verifies the server too: trusting another CA, it will not talk."""
    (tmp_path / "other-ca.crt").write_bytes(make_ca("elsewhere").certificate_pem)
    client = PixelgateClient(
        server.target,
        ca_file=tmp_path / "other-ca.crt",
        cert_file=pki.client_cert,
        key_file=pki.client_key,
        token=mint(),
    )
    with client, pytest.raises(Unavailable):
        client.list_models()


def test_the_callers_certificate_identity_reaches_the_server(server, connect):
    """The SPIFFE ID from the client certificate is part of the audited principal."""
    connect(server).list_models()
    [entry] = server.audit_entries()
    assert entry["principal"]["certificate"] == "spiffe://pixelgate.invalid/client/dev"
