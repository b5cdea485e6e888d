"""Shared fixtures: a development PKI, token minting, the tiny model, real servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from processes import RedisServer
from support import (
    EventLoopThread,
    ServerUnderTest,
    copying_loader,
    settings_for,
    start,
)

from pixelgate.client import PixelgateClient
from pixelgate.client.credentials import channel_credentials
from pixelgate.dev.pki import DevPkiFiles, write_dev_pki
from pixelgate.dev.tokens import SigningKey, load_signing_key, mint_access_token
from pixelgate.server.core.config import ModelSettings
from pixelgate.server.models.runtime import ModelRuntime, load_model


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPkiFiles:
    """A fresh development PKI (CA, server and client certificates, token keys)."""
    return write_dev_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def signing_key(pki: DevPkiFiles) -> SigningKey:
    """The development issuer's private key."""
    return load_signing_key(pki.signing_key)


@pytest.fixture(scope="session")
def mint(signing_key: SigningKey) -> Callable[..., str]:
    """Mints a development access token; keyword arguments as for mint_access_token."""

    def _mint(**claims: Any) -> str:
        claims.setdefault("subject", "test-user")
        return mint_access_token(signing_key, **claims)

    return _mint


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory the tiny model is built into on first use."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_model(model_cache: Path) -> ModelRuntime:
    """The embedded tiny model, built, saved and loaded back with from_pretrained."""
    return load_model(ModelSettings(), "cpu", model_cache)


@pytest.fixture(scope="session")
def event_loop_thread() -> Iterator[EventLoopThread]:
    """The asyncio loop test servers run on."""
    loop = EventLoopThread()
    yield loop
    loop.close()


@pytest.fixture
def start_server(
    pki: DevPkiFiles,
    model_cache: Path,
    tiny_model: ModelRuntime,
    event_loop_thread: EventLoopThread,
    tmp_path: Path,
) -> Iterator[Callable[..., ServerUnderTest]]:
    """Starts real servers over mTLS on free loopback ports; stops them after the test.

    Each writes its audit lines to a file of its own (`server.audit_entries()`).
    """
    started: list[ServerUnderTest] = []

    def _start(
        model: Any = None, loader: Any = None, span_processors: Any = (), **overrides: Any
    ) -> ServerUnderTest:
        """`model` replaces the tiny model (a copy per server); `loader` replaces loading;
        `span_processors` also receive the server's spans."""
        audit_file = tmp_path / f"audit-{len(started)}.jsonl"
        overrides.setdefault("audit", {"destination": str(audit_file)})
        server = start(
            settings_for(pki, model_cache, **overrides),
            loader or copying_loader(model or tiny_model),
            event_loop_thread,
            span_processors=span_processors,
        )
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop(0)


@pytest.fixture
def server(start_server: Callable[..., ServerUnderTest]) -> ServerUnderTest:
    """A server with default settings (and generous rate limits)."""
    return start_server()


@pytest.fixture
def connect(pki: DevPkiFiles, mint: Callable[..., str]) -> Iterator[Callable[..., PixelgateClient]]:
    """Opens clients to a server: the dev client certificate and a token with every scope."""
    clients: list[PixelgateClient] = []

    def _connect(server: ServerUnderTest, token: Any = "default", **tls: Path) -> PixelgateClient:
        client = PixelgateClient(
            server.target,
            ca_file=tls.get("ca_file", pki.ca_cert),
            cert_file=tls.get("cert_file", pki.client_cert),
            key_file=tls.get("key_file", pki.client_key),
            token=mint() if token == "default" else token,
        )
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        client.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real Redis on a free loopback port for the whole session."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session Redis's URL, emptied for this test."""
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def channel(pki: DevPkiFiles, mint: Callable[..., str]) -> Iterator[Callable[..., grpc.Channel]]:
    """Opens raw mTLS channels to a server, with a token (default: every scope) or none."""
    opened: list[grpc.Channel] = []

    def _open(server: ServerUnderTest, token: str | None = "default") -> grpc.Channel:
        credentials = channel_credentials(
            ca_file=pki.ca_cert,
            cert_file=pki.client_cert,
            key_file=pki.client_key,
            token=mint() if token == "default" else token,
        )
        opened.append(grpc.secure_channel(server.target, credentials))
        return opened[-1]

    yield _open
    for each in opened:
        each.close()
