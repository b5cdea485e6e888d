"""The `/metrics` HTTP listener: plaintext, off the gRPC port, in a thread of its own.

prometheus-client's WSGI app renders the server's registry (text format, or OpenMetrics
when the scraper asks for it); every other path is 404. Scrapes cost CPU only when
Prometheus asks.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

METRICS_PATH = "/metrics"

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _QuietHandler(WSGIRequestHandler):
    """No access line per scrape on stderr (the server's log stays its own)."""

    def log_message(self, format: str, *args: Any) -> None:  # `format`: the base class names it so
        return


def _only_metrics(app: WsgiApp) -> WsgiApp:
    def serve(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != METRICS_PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found; metrics are at /metrics\n"]
        return app(environ, start_response)

    return serve


def split_address(address: str) -> tuple[str, int]:
    """`"host:port"` (IPv6 as `"[::1]:9464"`) as (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class MetricsEndpoint:
    """A listening `/metrics` server; `port` is the one bound (port 0 picks one)."""

    host: str
    port: int
    _server: ThreadingWSGIServer
    _thread: threading.Thread

    def stop(self) -> None:
        """Stops listening and waits for the serving thread (blocking: run it off the loop)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def start_endpoint(address: str, registry: CollectorRegistry) -> MetricsEndpoint:
    """Serves `registry` at `address`; OSError when it cannot listen there."""
    host, port = split_address(address)

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = make_server(
        host, port, _only_metrics(make_wsgi_app(registry)), Server, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="metrics-endpoint", daemon=True)
    thread.start()
    return MetricsEndpoint(host, server.server_address[1], server, thread)


__all__ = ["METRICS_PATH", "MetricsEndpoint", "split_address", "start_endpoint"]
