"""The client gets its own tokens: OAuth 2.0 client credentials against a token endpoint.

The token endpoint here behaves like a standard authorization server: it issues a
JWT for the service named by RFC 8707 `resource` (or, like Auth0, `audience`) with
the scopes asked for, and an opaque token when no service is named.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import pytest

from pixelgate.client import (
    ClientCredentials,
    PixelgateClient,
    TokenEndpointError,
)
from pixelgate.dev import DEV_AUDIENCE, DEV_ISSUER
from pixelgate.dev.tokens import mint_access_token

RESOURCE = "https://pixelgate.example.internal"
"""The URI the authorization server knows pixelgate by (RFC 8707 resource)."""

SECRET = "s3cret with spaces & symbols:/"


class TokenEndpoint:
    """A minimal authorization server token endpoint on loopback, minting dev tokens."""

    def __init__(self, signing_key, *, client_id: str, client_secret: str) -> None:
        self.requests: list[dict] = []
        self.lifetime = 3600
        self.refusal: tuple[int, bytes] | None = None
        """A status and raw body to answer every request with instead."""
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                endpoint.requests.append(
                    {"form": form, "authorization": self.headers.get("authorization")}
                )
                if endpoint.refusal is not None:
                    self._reply(*endpoint.refusal)
                    return
                if not endpoint._authenticated(form, self.headers.get("authorization")):
                    self._reply(401, json.dumps({"error": "invalid_client"}).encode())
                    return
                service = form.get("resource") or form.get("audience")
                token = secrets.token_urlsafe(32)  # opaque: for no service in particular
                if service:
                    token = mint_access_token(
                        signing_key,
                        subject=client_id,
                        client_id=client_id,
                        scopes=form.get("scope", "").split(),
                        lifetime_seconds=endpoint.lifetime,
                        audience=service,
                    )
                answer = {"access_token": token, "token_type": "Bearer"}
                self._reply(200, json.dumps({**answer, "expires_in": endpoint.lifetime}).encode())

            def _reply(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._client_id = client_id
        self._secret = client_secret
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/oauth2/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _authenticated(self, form: dict, authorization: str | None) -> bool:
        if authorization:
            scheme, _, encoded = authorization.partition(" ")
            user, _, password = base64.b64decode(encoded).decode().partition(":")
            return scheme == "Basic" and (unquote(user), unquote(password)) == (
                self._client_id,
                self._secret,
            )
        return (form.get("client_id"), form.get("client_secret")) == (self._client_id, self._secret)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def token_endpoint(signing_key) -> Iterator[TokenEndpoint]:
    """An authorization server that knows one client, `svc-renderer`."""
    endpoint = TokenEndpoint(signing_key, client_id="svc-renderer", client_secret=SECRET)
    yield endpoint
    endpoint.close()


@pytest.fixture
def server(start_server, pki):
    """A server trusting the dev issuer's tokens for RESOURCE as well as for `pixelgate`."""
    issuer = {
        "issuer": DEV_ISSUER,
        "audiences": [DEV_AUDIENCE, RESOURCE],
        "public_key_files": [pki.verification_key],
    }
    return start_server(auth={"issuers": [issuer]})


@pytest.fixture
def unreachable_url() -> str:
    """A loopback token URL on a port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/oauth2/token"


def test_client_credentials_token_generates_an_image(server, connect, token_endpoint):
    """The client asks for its scopes, resource and audience (client_secret_basic) and generates."""
    source = ClientCredentials(
        token_endpoint.url,
        "svc-renderer",
        SECRET,
        scopes=["images:generate", "models:read"],
        audience="pixelgate",
        resource=RESOURCE,
    )
    [image] = connect(server, token=source).generate("a fox", steps=2)
    assert image.sha256
    [request] = token_endpoint.requests
    assert request["form"] == {
        "grant_type": "client_credentials",
        "scope": "images:generate models:read",
        "audience": "pixelgate",
        "resource": RESOURCE,
    }
    assert request["authorization"].startswith("Basic ")


def test_the_readme_example_generates_and_lists_models(server, pki, token_endpoint):
    """The README's client-credentials example, as written: import, scopes, RFC 8707 resource."""
    tokens = ClientCredentials(
        token_endpoint.url,
        client_id="svc-renderer",
        client_secret=SECRET,
        scopes=["images:generate", "models:read"],
        resource=RESOURCE,
    )
    with PixelgateClient(
        server.target,
        ca_file=pki.ca_cert,
        cert_file=pki.client_cert,
        key_file=pki.client_key,
        token=tokens,
    ) as client:
        assert [model.id for model in client.list_models()] == ["tiny-sd-test"]
        [image] = client.generate("a red fox in the snow", steps=2, seed=7)
    assert image.sha256
    assert len(token_endpoint.requests) == 1  # one token, cached for both calls


def test_the_token_is_cached_until_shortly_before_expiry(token_endpoint):
    """Repeated calls reuse one token; within the refresh margin of expiry a new one is fetched."""
    now = [1_000_000.0]
    token_endpoint.lifetime = 600
    source = ClientCredentials(
        token_endpoint.url, "svc-renderer", SECRET, refresh_margin_seconds=60, clock=lambda: now[0]
    )
    first = source()
    assert source() == first
    now[0] += 500
    assert source() == first
    assert len(token_endpoint.requests) == 1
    now[0] += 50  # 550 s in: inside the 60 s margin before the 600 s expiry
    assert source() != first
    assert len(token_endpoint.requests) == 2


def test_client_secret_post_sends_credentials_in_the_form(token_endpoint):
    """client_secret_post puts id and secret in the body and sends no Authorization header."""
    ClientCredentials(
        token_endpoint.url, "svc-renderer", SECRET, auth_method="client_secret_post"
    )()
    [request] = token_endpoint.requests
    assert request["authorization"] is None
    assert request["form"]["client_id"] == "svc-renderer"
    assert request["form"]["client_secret"] == SECRET


def test_a_refused_client_gets_its_own_error_from_the_call(server, connect, token_endpoint):
    """A wrong secret raises TokenEndpointError (code, status, no secret) from the call
    itself, not UNAVAILABLE; health checks, which need no token, still work."""
    source = ClientCredentials(
        token_endpoint.url, "svc-renderer", "wrong-secret", scopes=["models:read"]
    )
    client = connect(server, token=source)
    with pytest.raises(TokenEndpointError) as refused:
        client.list_models()
    assert str(refused.value) == "token endpoint refused: invalid_client (HTTP 401)"
    assert (refused.value.oauth_error, refused.value.http_status) == ("invalid_client", 401)
    assert refused.value.code is None  # no gRPC call was made
    with pytest.raises(TokenEndpointError, match="invalid_client"):
        client.generate("a fox", steps=2)
    assert client.health() == "SERVING"


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (400, b'{"error": "invalid_scope"}', "token endpoint refused: invalid_scope (HTTP 400)"),
        (400, b'{"error": "bad\\u001b[2J"}', "token endpoint refused: HTTP 400"),
        (503, b"<html>down for maintenance</html>", "token endpoint failed: HTTP 503"),
    ],
    ids=["oauth-error", "control-characters", "server-error"],
)
def test_a_token_endpoint_failure_names_the_code_and_status_only(
    token_endpoint, status, body, message
):
    """The message holds a well-formed RFC 6749 error code and the HTTP status, nothing else."""
    token_endpoint.refusal = (status, body)
    with pytest.raises(TokenEndpointError) as failed:
        ClientCredentials(token_endpoint.url, "svc-renderer", SECRET)()
    assert str(failed.value) == message
    assert failed.value.http_status == status


def test_an_unreachable_token_endpoint_is_its_own_error(server, connect, unreachable_url):
    """Nothing listening at the token URL: TokenEndpointError saying so, not UNAVAILABLE."""
    source = ClientCredentials(unreachable_url, "svc-renderer", SECRET, scopes=["models:read"])
    with pytest.raises(TokenEndpointError, match=r"^token endpoint unreachable: ") as failed:
        connect(server, token=source).list_models()
    assert failed.value.http_status is None
    assert SECRET not in str(failed.value)


def test_a_plain_http_token_endpoint_off_loopback_is_refused():
    """Client secrets only travel over https (plain http only to loopback, for tests)."""
    with pytest.raises(ValueError, match="https"):
        ClientCredentials("http://auth.example.com/token", "svc", SECRET)


@pytest.mark.parametrize("resource", ["pixelgate", "https://pixelgate.example.internal/#api"])
def test_a_resource_that_is_not_an_absolute_uri_is_refused(resource):
    """RFC 8707 resources are absolute URIs without a fragment; anything else fails at once."""
    with pytest.raises(ValueError, match="absolute URI"):
        ClientCredentials("https://auth.example.com/token", "svc", SECRET, resource=resource)


@pytest.fixture
def pixelgate_cli(
    server: Any, pki: Any, token_endpoint: TokenEndpoint, tmp_path: Path
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs `pixelgate` against the server with client credentials for the token endpoint."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)

    def _run(*args: str, token_url: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *(sys.executable, "-m", "pixelgate.client.cli"),
                *("--target", server.target, "--ca", str(pki.ca_cert)),
                *("--cert", str(pki.client_cert), "--key", str(pki.client_key)),
                *("--oauth-token-url", token_url or token_endpoint.url),
                *("--client-id", "svc-renderer", "--client-secret-file", str(secret_file)),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin"},
            cwd=tmp_path,  # where `generate` writes image.png
        )

    return _run


def test_the_cli_can_use_client_credentials(pixelgate_cli, token_endpoint):
    """`--oauth-scope S --oauth-resource R models` sends both to the endpoint and lists models."""
    result = pixelgate_cli("--oauth-scope", "models:read", "--oauth-resource", RESOURCE, "models")
    assert result.returncode == 0, result.stderr
    assert "tiny-sd-test" in result.stdout
    [request] = token_endpoint.requests
    assert (request["form"]["scope"], request["form"]["resource"]) == ("models:read", RESOURCE)


@pytest.mark.parametrize(
    ("command", "scope"),
    [(["models"], "models:read"), (["generate", "a fox", "--steps", "2"], "images:generate")],
)
def test_the_cli_asks_for_the_scope_its_command_needs(
    pixelgate_cli, token_endpoint, command, scope
):
    """Without --oauth-scope the CLI asks for the scope the command's RPC declares."""
    result = pixelgate_cli("--oauth-resource", RESOURCE, *command)
    assert result.returncode == 0, result.stderr
    assert [request["form"]["scope"] for request in token_endpoint.requests] == [scope]


def test_the_cli_reports_a_refused_client_in_one_line(pixelgate_cli, token_endpoint, tmp_path):
    """A wrong secret: exit 1 and one line naming the token endpoint's refusal, no secret."""
    (tmp_path / "secret").write_text("wrong-secret")
    result = pixelgate_cli("--oauth-resource", RESOURCE, "models")
    assert result.returncode == 1
    assert result.stderr == "pixelgate: token endpoint refused: invalid_client (HTTP 401)\n"
    assert "wrong-secret" not in result.stdout + result.stderr


def test_the_cli_reports_an_unreachable_token_endpoint_in_one_line(pixelgate_cli, unreachable_url):
    """Nothing at the token URL: exit 1 and one line saying the token endpoint is unreachable."""
    result = pixelgate_cli("models", token_url=unreachable_url)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("pixelgate: token endpoint unreachable: ")
