"""The `/metrics` listener: loopback by default, metrics only, closed when stopped."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from pixelgate.server.core.config import ConfigError, MetricsSettings, load_settings
from pixelgate.server.metrics.endpoint import split_address, start_endpoint


def _get(port: int, path: str, host: str = "127.0.0.1") -> str:
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as response:
        return str(response.read().decode())


def test_the_default_address_is_loopback() -> None:
    """Out of the box the listener is reachable from this host only."""
    host, port = split_address(MetricsSettings().address)
    assert (host, port) == ("127.0.0.1", 9464)
    assert MetricsSettings().enabled


def test_the_endpoint_binds_where_told_and_serves_only_metrics() -> None:
    """The default host with port 0: bound to 127.0.0.1, /metrics served, other paths 404,
    nothing listening once stopped."""
    registry = CollectorRegistry()
    Counter("pixelgate_test_events", "Test events.", registry=registry).inc(3)
    host, _ = split_address(MetricsSettings().address)
    endpoint = start_endpoint(f"{host}:0", registry)
    try:
        assert endpoint.host == "127.0.0.1"
        assert "pixelgate_test_events_total 3.0" in _get(endpoint.port, "/metrics")
        with pytest.raises(urllib.error.HTTPError) as missing:
            _get(endpoint.port, "/")
        assert missing.value.code == 404
    finally:
        endpoint.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", endpoint.port), timeout=2):
        pass


def test_a_busy_port_is_an_error() -> None:
    """Two listeners cannot share a port."""
    endpoint = start_endpoint("127.0.0.1:0", CollectorRegistry())
    try:
        with pytest.raises(OSError):
            start_endpoint(f"127.0.0.1:{endpoint.port}", CollectorRegistry())
    finally:
        endpoint.stop()


def test_ipv6_loopback_works() -> None:
    """ "[::1]:0" binds the IPv6 loopback."""
    try:
        endpoint = start_endpoint("[::1]:0", CollectorRegistry())
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        _get(endpoint.port, "/metrics", host="[::1]")
    finally:
        endpoint.stop()


def test_a_malformed_address_is_refused_as_configuration() -> None:
    """Validated like every setting, from the file or the environment."""
    with pytest.raises(ConfigError, match=r"metrics\.address"):
        load_settings(environ={"PIXELGATE_METRICS__ADDRESS": "9464"})
    assert load_settings(environ={"PIXELGATE_METRICS__ENABLED": "false"}).metrics.enabled is False
