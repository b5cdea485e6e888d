"""Remote keys under a slow issuer: every metadata or JWKS fetch ends within its deadline.

The issuer here answers chosen paths with their headers at once and then the body
one byte per 0.2 s (leading JSON whitespace, then the real document), a stall that
per-read timeouts never catch. pixelgate must give up on such a fetch after
`http_timeout_seconds`, keep its last good keys, keep refreshing on schedule and
listen at start-up without the issuer's keys.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from support import wait_for

from pixelgate.client import PixelgateClient, Unauthenticated
from pixelgate.dev.tokens import SigningKey, generate_signing_key, mint_access_token

RFC8414_PATH = "/.well-known/oauth-authorization-server"

FETCH_DEADLINE_S = 1.0
"""The servers' `http_timeout_seconds`: the most one key refresh may take."""

TRICKLE_INTERVAL_S = 0.2
TRICKLE_BYTES = 150
"""A trickled body takes TRICKLE_BYTES x TRICKLE_INTERVAL_S = 30 s to arrive in full."""

PROMPT_S = 10.0
"""What "well within the trickle" means: the 1 s deadline plus room for a busy machine."""

KEYS: dict[str, SigningKey] = {}


def signing_key(name: str) -> SigningKey:
    """The module's private key called `name`, made on first use."""
    if name not in KEYS:
        KEYS[name] = generate_signing_key()
    return KEYS[name]


class TricklingIssuer:
    """Discovery metadata and a JWKS on loopback; paths in `trickling` stall their body."""

    def __init__(self) -> None:
        self.jwks_keys = ["k1"]
        self.trickling: set[str] = set()
        self.hits: Counter[str] = Counter()
        self.held: list[float] = []
        """Seconds pixelgate kept each stalled request open (until it hung up or got it all)."""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body, trickle = issuer._answer(self.path)
                padding = TRICKLE_BYTES if trickle else 0
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(padding + len(body)))
                self.end_headers()
                started = time.monotonic()
                try:
                    self.wfile.flush()
                    for _ in range(padding):
                        if issuer._stopping.wait(TRICKLE_INTERVAL_S):
                            return
                        self.wfile.write(b" ")  # JSON allows leading whitespace
                        self.wfile.flush()
                    self.wfile.write(body)
                except OSError:
                    pass  # pixelgate gave up and closed the connection
                if trickle:
                    with issuer._lock:
                        issuer.held.append(time.monotonic() - started)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def _answer(self, path: str) -> tuple[bytes, bool]:
        with self._lock:
            self.hits[path] += 1
            trickle = path in self.trickling
            keys = list(self.jwks_keys)
        if path == RFC8414_PATH:
            document: dict[str, Any] = {"issuer": self.url, "jwks_uri": f"{self.url}/jwks"}
        elif path == "/jwks":
            document = {"keys": [_jwk(name) for name in keys]}
        else:
            return b"", False
        return json.dumps(document).encode(), trickle

    def fetches(self, path: str) -> int:
        """How many times `path` was requested so far."""
        with self._lock:
            return self.hits[path]

    def longest_hold(self) -> float:
        """The longest pixelgate kept a stalled request open, once at least one has ended."""
        wait_for(lambda: self.held, TRICKLE_BYTES * TRICKLE_INTERVAL_S + 5, "a stall to end")
        with self._lock:
            return max(self.held)

    def stop(self) -> None:
        """Ends every trickle and stops serving."""
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def _jwk(name: str) -> dict[str, Any]:
    entry = jwt.algorithms.ECAlgorithm.to_jwk(signing_key(name).public_key(), as_dict=True)
    return {**entry, "kid": name, "use": "sig", "alg": "ES256"}


@pytest.fixture
def issuer() -> Iterator[TricklingIssuer]:
    """A running issuer publishing k1, nothing trickling yet."""
    running = TricklingIssuer()
    yield running
    running.stop()


@pytest.fixture
def start_pixelgate(
    start_server: Callable[..., Any], issuer: TricklingIssuer
) -> Callable[..., Any]:
    """Starts pixelgate trusting only the issuer, found by discovery, with a 1 s fetch deadline."""

    def _start(**issuer_settings: Any) -> Any:
        settings = {
            "issuer": issuer.url,
            "audiences": ["pixelgate"],
            "discovery": True,
            "http_timeout_seconds": FETCH_DEADLINE_S,
            **issuer_settings,
        }
        return start_server(auth={"issuers": [settings]})

    return _start


def token_for(issuer: TricklingIssuer, key: str, kid: str | None = None) -> str:
    """A fresh access token from the issuer, signed by key `key`, naming `kid`."""
    return mint_access_token(
        signing_key(key),
        issuer=issuer.url,
        audience="pixelgate",
        subject="slow-issuer-user",
        extra_headers={"kid": kid or key},
    )


def lists_models(client: PixelgateClient) -> bool:
    """True when the call succeeds, False when it is UNAUTHENTICATED."""
    try:
        return bool(client.list_models(timeout=30))
    except Unauthenticated:
        return False


def test_start_up_does_not_wait_for_a_trickling_issuer(issuer, start_pixelgate, connect):
    """Start-up gives up on stalled metadata at the deadline and listens; the issuer's keys
    arrive once it answers."""
    issuer.trickling = {RFC8414_PATH}
    server = start_pixelgate(unknown_kid_refresh_seconds=0)
    assert issuer.longest_hold() < PROMPT_S  # not the 30 s the whole trickle takes
    assert connect(server, token=None).health() == "SERVING"
    with pytest.raises(Unauthenticated, match="signing key is not known"):
        connect(server, token=token_for(issuer, "k1")).list_models(timeout=30)

    issuer.trickling = set()  # the issuer recovers: the next unknown kid fetches its keys
    assert connect(server, token=token_for(issuer, "k1")).list_models(timeout=30)


def test_an_unknown_kid_is_answered_within_the_deadline_while_the_jwks_trickles(
    issuer, start_pixelgate, connect
):
    """A token naming a new kid is refused at the fetch deadline, not the caller's; k1 stays."""
    server = start_pixelgate(unknown_kid_refresh_seconds=0)
    assert connect(server, token=token_for(issuer, "k1")).list_models()

    issuer.trickling = {"/jwks"}
    fetched = issuer.fetches("/jwks")
    started = time.monotonic()
    with pytest.raises(Unauthenticated, match="signing key is not known"):
        connect(server, token=token_for(issuer, "k1", kid="k-new")).list_models(timeout=30)
    assert time.monotonic() - started < PROMPT_S
    assert issuer.fetches("/jwks") == fetched + 1  # it did try, and gave up
    assert issuer.longest_hold() < PROMPT_S
    assert connect(server, token=token_for(issuer, "k1")).list_models()  # last good keys kept


def test_a_trickling_refresh_does_not_hold_back_the_next_scheduled_one(
    issuer, start_pixelgate, connect
):
    """A stalled scheduled refresh is abandoned, so a key retired meanwhile stops working soon."""
    server = start_pixelgate(jwks_refresh_seconds=1, unknown_kid_refresh_seconds=30)
    cached = connect(server, token=token_for(issuer, "k1"))
    assert lists_models(cached)

    fetched = issuer.fetches("/jwks")
    issuer.trickling = {"/jwks"}
    wait_for(lambda: issuer.fetches("/jwks") > fetched, 5, "a scheduled refresh to stall")
    issuer.trickling = set()
    issuer.jwks_keys = ["k2"]  # rotation while that refresh stalls: k1 retired
    retired_at = time.monotonic()
    wait_for(lambda: not lists_models(cached), PROMPT_S, "the retired k1 to stop working")
    assert time.monotonic() - retired_at < PROMPT_S
    assert connect(server, token=token_for(issuer, "k2")).list_models()
