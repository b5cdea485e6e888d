"""The client gets its own tokens: OAuth 2.0 client credentials against a token endpoint."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest

from pixelgate.client import PixelgateError
from pixelgate.client.oauth import ClientCredentials, OAuthError
from pixelgate.dev.tokens import mint_access_token


class TokenEndpoint:
    """A minimal authorization server token endpoint on loopback, minting dev tokens."""

    def __init__(self, signing_key, *, client_id: str, client_secret: str) -> None:
        self.requests: list[dict] = []
        self.lifetime = 3600
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                endpoint.requests.append(
                    {"form": form, "authorization": self.headers.get("authorization")}
                )
                if not endpoint._authenticated(form, self.headers.get("authorization")):
                    self._reply(401, {"error": "invalid_client"})
                    return
                token = mint_access_token(
                    signing_key,
                    subject=client_id,
                    client_id=client_id,
                    scopes=form.get("scope", "").split(),
                    lifetime_seconds=endpoint.lifetime,
                )
                self._reply(
                    200,
                    {
                        "access_token": token,
                        "token_type": "Bearer",
                        "expires_in": endpoint.lifetime,
                    },
                )

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
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
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _authenticated(self, form: dict, authorization: str | None) -> bool:
        if authorization:
            scheme, _, encoded = authorization.partition(" ")
            user, _, password = base64.b64decode(encoded).decode().partition(":")
            from urllib.parse import unquote

            return scheme == "Basic" and (unquote(user), unquote(password)) == (
                self._client_id,
                self._secret,
            )
        return (form.get("client_id"), form.get("client_secret")) == (self._client_id, self._secret)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


SECRET = "s3cret with spaces & symbols:/"


@pytest.fixture
def token_endpoint(signing_key) -> Iterator[TokenEndpoint]:
    """An authorization server that knows one client, `svc-renderer`."""
    endpoint = TokenEndpoint(signing_key, client_id="svc-renderer", client_secret=SECRET)
    yield endpoint
    endpoint.close()


def test_client_credentials_token_generates_an_image(server, connect, token_endpoint):
    """The client fetches a token itself (client_secret_basic) and uses it for a generation."""
    source = ClientCredentials(
        token_endpoint.url,
        "svc-renderer",
        SECRET,
        scopes=["images:generate", "models:read"],
        audience="pixelgate",
        resource="https://pixelgate.internal",
    )
    [image] = connect(server, token=source).generate("a fox", steps=2)
    assert image.sha256
    [request] = token_endpoint.requests
    assert request["form"] == {
        "grant_type": "client_credentials",
        "scope": "images:generate models:read",
        "audience": "pixelgate",
        "resource": "https://pixelgate.internal",
    }
    assert request["authorization"].startswith("Basic ")


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


def test_a_refused_client_gets_a_clear_error_without_its_secret(server, connect, token_endpoint):
    """Wrong credentials: the token source raises OAuthError; a call fails without leaking."""
    source = ClientCredentials(token_endpoint.url, "svc-renderer", "wrong-secret")
    with pytest.raises(OAuthError, match="invalid_client") as caught:
        source()
    assert "wrong-secret" not in str(caught.value)
    with pytest.raises(PixelgateError) as failed:
        connect(server, token=source).list_models()
    assert "wrong-secret" not in str(failed.value)


def test_a_plain_http_token_endpoint_off_loopback_is_refused():
    """Client secrets only travel over https (plain http only to loopback, for tests)."""
    with pytest.raises(ValueError, match="https"):
        ClientCredentials("http://auth.example.com/token", "svc", SECRET)


def test_the_cli_can_use_client_credentials(server, pki, token_endpoint, tmp_path):
    """`pixelgate --oauth-token-url ... models` gets its own token and lists models."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pixelgate.client.cli",
            "--target",
            server.target,
            "--ca",
            str(pki.ca_cert),
            "--cert",
            str(pki.client_cert),
            "--key",
            str(pki.client_key),
            "--oauth-token-url",
            token_endpoint.url,
            "--client-id",
            "svc-renderer",
            "--client-secret-file",
            str(secret_file),
            "--oauth-scope",
            "models:read",
            "models",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "tiny-sd-test" in result.stdout
    assert token_endpoint.requests[0]["form"]["scope"] == "models:read"
