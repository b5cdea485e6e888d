"""Remote keys: issuer discovery, JWKS rotation, refresh limits and failures, kept keys.

A tiny issuer is served over plain HTTP on loopback from a thread. Its metadata,
JWKS and failure modes are mutable from the test, and it counts every request
by path, so the tests see exactly what pixelgate fetched and when.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest

from pixelgate.client import PixelgateClient, Unauthenticated
from pixelgate.dev.tokens import SigningKey, generate_signing_key, mint_access_token

RFC8414_PATH = "/.well-known/oauth-authorization-server"
OPENID_PATH = "/.well-known/openid-configuration"

KEYS: dict[str, SigningKey] = {}
"""Signing keys by name, made once per module (EC key generation is cheap, but why repeat)."""


def signing_key(name: str) -> SigningKey:
    """The module's private key called `name` (k1, k2, attacker, ...)."""
    if name not in KEYS:
        KEYS[name] = generate_signing_key()
    return KEYS[name]


def jwk(name: str, kid: str | None = None) -> dict[str, Any]:
    """The public JWK of key `name`, with `kid` (default: the name)."""
    entry = jwt.algorithms.ECAlgorithm.to_jwk(signing_key(name).public_key(), as_dict=True)
    return {**entry, "kid": kid or name, "use": "sig", "alg": "ES256"}


@dataclass
class FakeIssuer:
    """An OAuth authorization server's public documents, served from a thread."""

    httpd: ThreadingHTTPServer
    url: str
    metadata: dict[str, Any] | None = None
    """Served at the RFC 8414 path; None answers 404."""
    openid_metadata: dict[str, Any] | None = None
    """Served at the OpenID discovery path; None answers 404."""
    jwks_keys: list[str] = field(default_factory=lambda: ["k1"])
    """Names of the keys published at /jwks (each key's kid is its name)."""
    jwks_status: int = 200
    """Status /jwks answers; anything but 200 sends an error body."""
    jwks_body: bytes | None = None
    """Raw body for /jwks instead of the JSON document (to serve garbage)."""
    evil_keys: list[dict[str, Any]] = field(default_factory=list)
    """The JWKS at /evil: an attacker's keys a token may point at."""
    hits: Counter[str] = field(default_factory=Counter)
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: bool = False

    def discovery_document(self, issuer: str | None = None) -> dict[str, Any]:
        """RFC 8414 metadata naming `issuer` (default: this issuer) and /jwks."""
        return {"issuer": issuer or self.url, "jwks_uri": f"{self.url}/jwks"}

    def answer(self, path: str) -> tuple[int, bytes]:
        """Status and body for a GET of `path`, as the state says now."""
        with self.lock:
            self.hits[path] += 1
            self.requests.append(path)
        if path == RFC8414_PATH and self.metadata is not None:
            return 200, json.dumps(self.metadata).encode()
        if path == OPENID_PATH and self.openid_metadata is not None:
            return 200, json.dumps(self.openid_metadata).encode()
        if path == "/jwks":
            if self.jwks_status != 200:
                return self.jwks_status, b'{"error": "server_error"}'
            if self.jwks_body is not None:
                return 200, self.jwks_body
            return 200, json.dumps({"keys": [jwk(name) for name in self.jwks_keys]}).encode()
        if path == "/evil":
            return 200, json.dumps({"keys": self.evil_keys}).encode()
        return 404, b'{"error": "not_found"}'

    def fetches(self, path: str) -> int:
        """How many times `path` was requested so far."""
        with self.lock:
            return self.hits[path]

    def stop(self) -> None:
        """Stops serving; the port then refuses connections."""
        if not self.stopped:
            self.stopped = True
            self.httpd.shutdown()
            self.httpd.server_close()


@pytest.fixture
def issuer() -> Iterator[FakeIssuer]:
    """A running fake issuer publishing key k1, with RFC 8414 metadata."""
    state: FakeIssuer | None = None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            assert state is not None
            status, body = state.answer(self.path)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output quiet

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    state = FakeIssuer(httpd=httpd, url=url)
    state.metadata = state.discovery_document()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    state.stop()
    thread.join(5)


@pytest.fixture
def start_pixelgate(start_server: Callable[..., Any], issuer: FakeIssuer) -> Callable[..., Any]:
    """Starts pixelgate trusting only the fake issuer, found by discovery."""

    def _start(**issuer_settings: Any) -> Any:
        settings = {
            "issuer": issuer.url,
            "audiences": ["pixelgate"],
            "discovery": True,
            **issuer_settings,
        }
        return start_server(auth={"issuers": [settings]})

    return _start


class Bearer:
    """A token source for one client whose token the test swaps between calls."""

    def __init__(self, token: str = "") -> None:
        self.token = token

    def __call__(self) -> str:
        return self.token


def token_for(issuer: FakeIssuer, key: str, kid: str | None = None, **options: Any) -> str:
    """A fresh access token from the fake issuer, signed by key `key`, naming `kid`."""
    headers = {"kid": kid or key, **options.pop("extra_headers", {})}
    return mint_access_token(
        signing_key(key),
        issuer=issuer.url,
        audience="pixelgate",
        subject=options.pop("subject", "rotation-user"),
        extra_headers=headers,
        **options,
    )


def lists_models(client: PixelgateClient) -> bool:
    """True when the call succeeds, False when it is UNAUTHENTICATED."""
    try:
        return bool(client.list_models())
    except Unauthenticated:
        return False


def eventually(check: Callable[[], bool], timeout: float = 4.0) -> bool:
    """Polls `check` every 0.1 s until it holds or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def test_discovery_finds_the_jwks_and_its_keys_verify_tokens(issuer, start_pixelgate, connect):
    """An issuer configured by URL alone works: metadata, then JWKS, then tokens verify."""
    server = start_pixelgate()
    assert issuer.requests == [RFC8414_PATH, "/jwks"]
    models = connect(server, token=token_for(issuer, "k1")).list_models()
    assert [model.id for model in models] == ["tiny-sd-test"]


def test_a_key_added_to_the_jwks_works_without_a_restart(issuer, start_pixelgate, connect):
    """A token signed by a newly published key works on its first call (one extra fetch)."""
    server = start_pixelgate(unknown_kid_refresh_seconds=0)
    before = issuer.fetches("/jwks")
    issuer.jwks_keys = ["k1", "k2"]
    assert connect(server, token=token_for(issuer, "k2")).list_models()
    assert issuer.fetches("/jwks") == before + 1
    assert connect(server, token=token_for(issuer, "k1")).list_models()  # k1 still published
    assert issuer.fetches("/jwks") == before + 1  # a known kid needs no fetch


def test_a_retired_key_stops_working_at_the_next_scheduled_refresh(
    issuer, start_pixelgate, connect
):
    """Once the issuer drops a key, its tokens fail after the next refresh, cached ones too."""
    server = start_pixelgate(jwks_refresh_seconds=1, unknown_kid_refresh_seconds=30)
    cached = connect(server, token=token_for(issuer, "k1"))
    assert cached.list_models()
    assert cached.list_models()  # verified once, remembered since

    fetched = issuer.fetches("/jwks")
    issuer.jwks_keys = ["k2"]  # rotation: k1 retired, k2 in its place
    assert eventually(lambda: not lists_models(cached)), "the cached k1 token kept working"
    assert issuer.fetches("/jwks") > fetched
    assert not lists_models(connect(server, token=token_for(issuer, "k1")))
    assert connect(server, token=token_for(issuer, "k2")).list_models()


def test_a_retired_key_stops_working_once_an_unknown_kid_refreshes(
    issuer, start_pixelgate, connect
):
    """A rotation noticed through a new kid retires the old key at once, for cached tokens too."""
    server = start_pixelgate(unknown_kid_refresh_seconds=0)
    old = connect(server, token=token_for(issuer, "k1"))
    assert old.list_models()

    issuer.jwks_keys = ["k2"]
    assert connect(server, token=token_for(issuer, "k2")).list_models()  # triggers the refresh
    with pytest.raises(Unauthenticated, match="signing key is not known"):
        old.list_models()
    with pytest.raises(Unauthenticated, match="signing key is not known"):
        connect(server, token=token_for(issuer, "k1")).list_models()


def test_a_flood_of_unknown_kids_fetches_the_jwks_at_most_once(issuer, start_pixelgate, connect):
    """Random kids are all refused and cannot make pixelgate hammer the issuer's JWKS."""
    server = start_pixelgate(unknown_kid_refresh_seconds=30)
    before = issuer.fetches("/jwks")
    bearer = Bearer()
    client = connect(server, token=bearer)
    for _ in range(20):
        bearer.token = token_for(issuer, "k1", kid=secrets.token_urlsafe(8))
        with pytest.raises(Unauthenticated, match="signing key is not known"):
            client.list_models()
    assert issuer.fetches("/jwks") - before <= 1
    assert issuer.fetches(RFC8414_PATH) == 1
    bearer.token = token_for(issuer, "k1")
    assert client.list_models()  # real tokens are unaffected


def test_unknown_kids_refresh_again_only_after_the_interval(issuer, start_pixelgate, connect):
    """After the interval one unknown kid refreshes the JWKS; the rest of the burst does not."""
    interval = 1.5
    server = start_pixelgate(unknown_kid_refresh_seconds=interval)
    bearer = Bearer()
    client = connect(server, token=bearer)
    time.sleep(interval + 0.1)  # the start-up fetch no longer counts against the interval
    before = issuer.fetches("/jwks")
    started = time.monotonic()
    for _ in range(20):
        bearer.token = token_for(issuer, "k1", kid=secrets.token_urlsafe(8))
        with pytest.raises(Unauthenticated):
            client.list_models()
    elapsed = time.monotonic() - started
    extra = issuer.fetches("/jwks") - before
    assert 1 <= extra <= 1 + int(elapsed // interval)


@pytest.mark.parametrize("failure", ["http-500", "not-json", "nested-too-deep", "issuer-down"])
def test_known_keys_keep_working_while_the_jwks_cannot_be_fetched(
    issuer, start_pixelgate, connect, failure
):
    """An unreachable or broken JWKS endpoint does not lock callers out: last good keys stay."""
    server = start_pixelgate(unknown_kid_refresh_seconds=0)
    cached = connect(server, token=token_for(issuer, "k1"))
    assert cached.list_models()

    if failure == "http-500":
        issuer.jwks_status = 500
    elif failure == "not-json":
        issuer.jwks_body = b"<html>maintenance</html>"
    elif failure == "nested-too-deep":
        issuer.jwks_body = b"[" * 100_000  # within the size limit, beyond json's recursion
    else:
        issuer.stop()
    before = issuer.fetches("/jwks")
    with pytest.raises(Unauthenticated):  # an unknown kid forces a (failing) refresh
        connect(server, token=token_for(issuer, "k1", kid="k-unknown")).list_models()
    if failure != "issuer-down":
        assert issuer.fetches("/jwks") == before + 1

    assert cached.list_models()
    assert connect(server, token=token_for(issuer, "k1")).list_models()  # not from the cache


def test_metadata_naming_another_issuer_is_refused(issuer, start_pixelgate, connect):
    """Metadata for a different issuer loads no keys (RFC 8414 3.3): every token is refused."""
    issuer.metadata = issuer.discovery_document(issuer="https://impostor.example")
    issuer.openid_metadata = issuer.discovery_document(issuer=f"{issuer.url}/other")
    server = start_pixelgate()
    assert issuer.fetches(RFC8414_PATH) == 1
    assert issuer.fetches(OPENID_PATH) == 1
    assert issuer.fetches("/jwks") == 0  # its jwks_uri is never followed
    with pytest.raises(Unauthenticated, match="signing key is not known"):
        connect(server, token=token_for(issuer, "k1")).list_models()


def test_openid_discovery_is_the_fallback_for_rfc8414_metadata(issuer, start_pixelgate, connect):
    """An issuer publishing only an OpenID configuration is still found, after RFC 8414 404s."""
    issuer.metadata = None
    issuer.openid_metadata = issuer.discovery_document()
    server = start_pixelgate()
    assert issuer.requests == [RFC8414_PATH, OPENID_PATH, "/jwks"]
    assert connect(server, token=token_for(issuer, "k1")).list_models()


@pytest.mark.parametrize("header", ["jku", "x5u", "jwk"])
def test_a_token_cannot_name_its_own_verification_key(issuer, start_pixelgate, connect, header):
    """A token pointing at (or embedding) an attacker's key is refused; /evil is never fetched."""
    issuer.evil_keys = [jwk("attacker", kid="k1")]
    server = start_pixelgate(unknown_kid_refresh_seconds=0)
    value: Any = f"{issuer.url}/evil" if header != "jwk" else jwk("attacker", kid="k1")
    forged = token_for(issuer, "attacker", kid="k1", extra_headers={header: value})
    with pytest.raises(Unauthenticated, match="signature is not valid"):
        connect(server, token=forged).list_models()
    assert issuer.fetches("/evil") == 0
    assert connect(server, token=token_for(issuer, "k1")).list_models()  # the real k1 works
