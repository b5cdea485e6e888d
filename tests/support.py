"""Test support: real servers on free loopback ports, real PKI, real tokens."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pixelgate.dev import DEV_AUDIENCE, DEV_ISSUER
from pixelgate.dev.pki import DevPkiFiles
from pixelgate.server.app import RunningServer, start_server
from pixelgate.server.config import Settings, load_settings
from pixelgate.server.models import LoadedModel

T = TypeVar("T")


def settings_for(pki: DevPkiFiles, cache_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test server: loopback, port 0, the test PKI, generous rate limits."""
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "tls": {
            "cert_file": pki.server_cert,
            "key_file": pki.server_key,
            "client_ca_file": pki.ca_cert,
        },
        "auth": {
            "issuers": [
                {
                    "issuer": DEV_ISSUER,
                    "audiences": [DEV_AUDIENCE],
                    "public_key_files": [pki.verification_key],
                }
            ]
        },
        "rate_limit": {"requests_per_minute": 6000, "burst": 1000},
        "cache_dir": cache_dir,
    }
    base.update(overrides)
    return load_settings(None, **base)


class EventLoopThread:
    """An asyncio loop in a daemon thread, for running the aio server beside sync test code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Runs `coroutine` on the loop and waits for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        """Stops the loop and joins the thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class ServerUnderTest:
    """A running server and how to reach it."""

    running: RunningServer
    settings: Settings
    loop: EventLoopThread

    @property
    def target(self) -> str:
        """host:port to dial."""
        return f"127.0.0.1:{self.running.port}"

    def stop(self, grace: float | None = 0) -> None:
        """Stops the server (health NOT_SERVING, calls refused, in-flight get `grace`)."""
        self.loop.run(self.running.stop(grace))


def start(settings: Settings, model: LoadedModel | Any, loop: EventLoopThread) -> ServerUnderTest:
    """Starts a server for `settings` on `loop`, sharing an already-loaded model."""
    running = loop.run(start_server(settings, model=model))
    return ServerUnderTest(running=running, settings=settings, loop=loop)
