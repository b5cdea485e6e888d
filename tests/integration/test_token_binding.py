"""Certificate-bound tokens (RFC 8705) and the client-certificate identity policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pixelgate.client import PermissionDenied, Unauthenticated
from pixelgate.dev import DEV_CLIENT_ID
from pixelgate.dev.pki import DevPkiFiles, Issued, issue_client_certificate
from pixelgate.server.security.client_identity import certificate_thumbprint

OTHER_CLIENT_ID = "spiffe://pixelgate.invalid/client/other"


def thumbprint_of(cert_file: Path) -> str:
    """The `x5t#S256` of the PEM certificate in `cert_file`."""
    return certificate_thumbprint(x509.load_pem_x509_certificate(cert_file.read_bytes()))


@pytest.fixture(scope="module")
def other_client(pki: DevPkiFiles, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A second client certificate from the same CA (so it passes mTLS), with its own SPIFFE ID."""
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = Issued(x509.load_pem_x509_certificate(pki.ca_cert.read_bytes()), ca_key)
    issued = issue_client_certificate(ca, OTHER_CLIENT_ID)
    directory = tmp_path_factory.mktemp("other-client")
    (directory / "client.crt").write_bytes(issued.certificate_pem)
    (directory / "client.key").write_bytes(issued.key_pem)
    return {"cert_file": directory / "client.crt", "key_file": directory / "client.key"}


@pytest.fixture
def bound_token(pki: DevPkiFiles, mint: Any) -> str:
    """A token bound to the development client certificate."""
    return mint(extra_claims={"cnf": {"x5t#S256": thumbprint_of(pki.client_cert)}})


def test_a_bound_token_works_over_its_certificate(server, connect, bound_token):
    """A token bound to the caller's certificate is accepted over that certificate."""
    assert connect(server, token=bound_token).list_models()


def test_a_bound_token_is_useless_over_another_certificate(
    server, connect, bound_token, other_client
):
    """A stolen bound token fails over any other certificate, even one the CA signed."""
    assert connect(server, token=bound_token).list_models()  # verified, and now cached
    thief = connect(server, token=bound_token, **other_client)
    with pytest.raises(Unauthenticated, match="bound to another client certificate"):
        thief.list_models()


def test_a_token_bound_to_the_other_certificate_works_only_there(
    server, connect, mint, other_client
):
    """Binding follows the certificate named in `cnf`, not the development one."""
    token = mint(extra_claims={"cnf": {"x5t#S256": thumbprint_of(other_client["cert_file"])}})
    assert connect(server, token=token, **other_client).list_models()
    with pytest.raises(Unauthenticated, match="bound to another client certificate"):
        connect(server, token=token).list_models()


def test_require_bound_tokens_refuses_unbound_ones(start_server, connect, mint, bound_token):
    """With require_bound_tokens, a bearer token alone is refused and a bound one works."""
    server = start_server(auth={"require_bound_tokens": True})
    with pytest.raises(Unauthenticated, match="must be bound to the client certificate"):
        connect(server, token=mint()).list_models()
    assert connect(server, token=bound_token).list_models()


@pytest.mark.parametrize(
    "cnf",
    [
        {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"},
        {"x5t#S256": ""},
        {"x5t#S256": 12345},
        "x5t#S256",
    ],
    ids=["dpop-jkt", "empty-thumbprint", "number-thumbprint", "not-an-object"],
)
def test_an_unsupported_confirmation_is_refused(server, connect, mint, cnf):
    """A `cnf` the server cannot check is refused rather than ignored (RFC 7800 3)."""
    token = mint(extra_claims={"cnf": cnf})
    with pytest.raises(Unauthenticated, match="confirmation"):
        connect(server, token=token).list_models()


def test_certificate_must_match_sub(start_server, connect, mint):
    """With certificate_must_match = "sub", only a token for the certificate's identity works."""
    server = start_server(auth={"certificate_must_match": "sub"})
    assert connect(server, token=mint(subject=DEV_CLIENT_ID, client_id="app")).list_models()
    with pytest.raises(Unauthenticated, match="sub does not match the client certificate"):
        connect(server, token=mint(subject="someone-else", client_id=DEV_CLIENT_ID)).list_models()


def test_certificate_must_match_client_id(start_server, connect, mint):
    """With certificate_must_match = "client_id", the token's client_id must be the cert's."""
    server = start_server(auth={"certificate_must_match": "client_id"})
    assert connect(server, token=mint(subject="alice", client_id=DEV_CLIENT_ID)).list_models()
    with pytest.raises(Unauthenticated, match="client_id does not match the client certificate"):
        connect(server, token=mint(subject=DEV_CLIENT_ID, client_id="another-app")).list_models()


def test_certificate_must_match_follows_the_certificate_presented(
    start_server, connect, mint, other_client
):
    """A token for the dev identity is refused over another certificate, and vice versa."""
    server = start_server(auth={"certificate_must_match": "sub"})
    with pytest.raises(Unauthenticated, match="does not match"):
        connect(server, token=mint(subject=DEV_CLIENT_ID), **other_client).list_models()
    assert connect(server, token=mint(subject=OTHER_CLIENT_ID), **other_client).list_models()


def test_a_certificate_identity_not_allowed_is_permission_denied(start_server, connect):
    """A certificate outside allowed_client_identities is refused even with a valid token."""
    server = start_server(auth={"allowed_client_identities": [OTHER_CLIENT_ID]})
    with pytest.raises(PermissionDenied, match="client certificate identity is not allowed"):
        connect(server).list_models()
    with pytest.raises(PermissionDenied):  # decided before the token is even looked at
        connect(server, token=None).list_models()


def test_an_allowed_certificate_identity_gets_in(start_server, connect, other_client):
    """Listed identities pass; the rest of the CA's certificates do not."""
    server = start_server(auth={"allowed_client_identities": [DEV_CLIENT_ID, "spiffe://x/y"]})
    assert connect(server).list_models()
    with pytest.raises(PermissionDenied):
        connect(server, **other_client).list_models()


def test_health_answers_certificates_outside_the_allowlist(start_server, connect):
    """The token-less health service answers any mTLS client; the allowlist guards the API."""
    server = start_server(auth={"allowed_client_identities": [OTHER_CLIENT_ID]})
    client = connect(server, token=None)
    assert client.health() == "SERVING"
    with pytest.raises(PermissionDenied):
        client.list_models()


def test_reflection_is_closed_to_certificates_outside_the_allowlist(start_server, pki):
    """The API's schema is not shown to a certificate the allowlist leaves out."""
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    def list_services(target: str) -> list[str]:
        credentials = grpc.ssl_channel_credentials(
            pki.ca_cert.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
        )
        with grpc.secure_channel(target, credentials) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            [response] = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
        return [service.name for service in response.list_services_response.service]

    closed = start_server(auth={"allowed_client_identities": [OTHER_CLIENT_ID]})
    with pytest.raises(grpc.RpcError) as caught:
        list_services(closed.target)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    open_ = start_server(auth={"allowed_client_identities": [DEV_CLIENT_ID]})
    assert "pixelgate.v1.ImageService" in list_services(open_.target)
