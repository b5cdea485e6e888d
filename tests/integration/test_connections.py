"""Connections that stall, idle, stop answering or grow old are closed; streams are capped.

The peers here are raw sockets (TCP, TLS, hand-written HTTP/2 frames) doing what a
broken or hostile client does, against a real server over mutual TLS with short
[connections] timeouts. Each read has a deadline, so a connection the server keeps
open fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import socket
import ssl
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import wait_for

from pixelgate.dev.pki import DevPkiFiles

pytestmark = pytest.mark.timeout(60)

HANDSHAKE_TIMEOUT = 0.5
"""The test servers' handshake timeout, in seconds."""

MARGIN = 3.0
"""How much later than its timeout a close may come (the machine is shared and slow)."""


def _connect(server) -> socket.socket:
    host, port = server.target.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def _until_closed(sock: socket.socket, started: float, within: float) -> tuple[float, int]:
    """Reads (and drops) what the server sends until it closes the connection: the seconds
    since `started` and the bytes it sent."""
    received = 0
    try:
        while True:
            sock.settimeout(max(0.01, within - (time.monotonic() - started)))
            data = sock.recv(65536)
            if not data:
                break
            received += len(data)
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {within} s")
    return time.monotonic() - started, received


def _client_hello() -> bytes:
    """The first flight of a real TLS client: its ClientHello, as it goes on the wire."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- connections that never finish the handshake -------------------------------------


def test_a_connection_that_never_speaks_is_closed_within_the_handshake_timeout(start_server):
    """A TCP connection that sends nothing is closed once the handshake timeout passes."""
    server = start_server(connections={"handshake_timeout_seconds": HANDSHAKE_TIMEOUT})
    started = time.monotonic()
    with _connect(server) as silent:
        lasted, received = _until_closed(silent, started, HANDSHAKE_TIMEOUT + MARGIN)
    assert received == 0
    assert lasted >= HANDSHAKE_TIMEOUT * 0.9


def test_a_tls_handshake_that_stops_after_client_hello_is_closed(start_server):
    """A client that sends its ClientHello and then nothing more is cut off."""
    server = start_server(connections={"handshake_timeout_seconds": HANDSHAKE_TIMEOUT})
    started = time.monotonic()
    with _connect(server) as stalled:
        stalled.sendall(_client_hello())
        lasted, received = _until_closed(stalled, started, HANDSHAKE_TIMEOUT + MARGIN)
    assert received > 0  # the server answered the hello, then waited for the rest
    assert lasted >= HANDSHAKE_TIMEOUT * 0.9


def test_silent_connections_do_not_hold_the_servers_file_descriptors(start_server, channel):
    """Many connections that never speak: the server releases its descriptors while the
    clients still hold theirs (the server runs in this process, so both count here)."""
    server = start_server(connections={"handshake_timeout_seconds": HANDSHAKE_TIMEOUT * 2})
    health = health_pb2_grpc.HealthStub(channel(server, token=None))
    health.Check(health_pb2.HealthCheckRequest(), timeout=5)  # the server's lazy fds, now
    count, slack = 50, 5
    before = _open_fds()
    sockets = [_connect(server) for _ in range(count)]
    try:
        wait_for(lambda: _open_fds() >= before + 2 * count, 5, "the server accepting them")
        wait_for(
            lambda: _open_fds() <= before + count + slack,
            HANDSHAKE_TIMEOUT * 2 + MARGIN,
            "the server closing its side of every silent connection",
        )
    finally:
        for each in sockets:
            each.close()
    wait_for(lambda: _open_fds() <= before + slack, 5, "no descriptor left behind")


# --- idle connections ----------------------------------------------------------------


def test_an_idle_connection_is_closed_after_max_idle(start_server, channel):
    """An mTLS connection with no call open is told to go away after max_idle_seconds:
    the client's channel drops from READY to IDLE (it reconnects on its next call)."""
    server = start_server(connections={"max_idle_seconds": 0.5})
    ch = channel(server, token=None)
    health = health_pb2_grpc.HealthStub(ch)
    health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    states: list[grpc.ChannelConnectivity] = []
    ch.subscribe(states.append)
    wait_for(lambda: grpc.ChannelConnectivity.READY in states, 5, "a ready connection")
    wait_for(
        lambda: states[-1] == grpc.ChannelConnectivity.IDLE,
        0.5 + MARGIN,
        "the server closing the idle connection",
    )
    ch.unsubscribe(states.append)
    status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING  # the next call reconnects


# --- a peer that stops answering pings ------------------------------------------------

_SETTINGS, _PING, _GOAWAY = 4, 6, 7
_ACK = 1


def _frame(kind: int, flags: int, payload: bytes = b"") -> bytes:
    stream = (0).to_bytes(4, "big")  # connection-level frames only
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream + payload


class _DeafHttp2Peer:
    """An HTTP/2 client over mutual TLS that acknowledges settings and nothing else."""

    def __init__(self, server, pki: DevPkiFiles) -> None:
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        context.set_alpn_protocols(["h2"])
        self.sock = context.wrap_socket(_connect(server), server_hostname="localhost")
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(_SETTINGS, 0))

    def frames_until_closed(self, within: float) -> list[tuple[int, bytes]]:
        """(type, payload) of each frame the server sends until it closes the connection."""
        started, buffer, frames = time.monotonic(), b"", []
        while True:
            while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
                end = 9 + int.from_bytes(buffer[:3], "big")
                kind, flags, payload, buffer = buffer[3], buffer[4], buffer[9:end], buffer[end:]
                if kind == _SETTINGS and not flags & _ACK:
                    self.sock.sendall(_frame(_SETTINGS, _ACK))
                frames.append((kind, payload))
            left = within - (time.monotonic() - started)
            if left <= 0:
                pytest.fail(f"the server kept the connection open for {within} s")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                data = b""
            except TimeoutError:
                continue
            if not data:
                return frames
            buffer += data

    def close(self) -> None:
        """Closes the socket."""
        self.sock.close()


def test_a_peer_that_stops_answering_pings_is_disconnected(start_server, pki):
    """The server pings a silent client; one that never answers is cut off after the
    keepalive timeout (not grpc's hidden one-minute ping timeout)."""
    server = start_server(
        connections={
            "keepalive_time_seconds": 0.3,
            "keepalive_timeout_seconds": 0.5,
            "keepalive_without_calls": True,
        }
    )
    peer = _DeafHttp2Peer(server, pki)
    try:
        frames = peer.frames_until_closed(0.3 + 0.5 + MARGIN)
    finally:
        peer.close()
    assert _PING in [kind for kind, _ in frames], "the server never pinged"
    [reason] = [payload[8:] for kind, payload in frames if kind == _GOAWAY]
    assert reason == b"ping_timeout"


# --- old connections ------------------------------------------------------------------


def test_a_call_in_flight_at_max_age_runs_on_through_the_grace(start_server, channel):
    """At max age the server tells the connection to go away, but the call open on it runs
    on until the grace ends; then the connection closes and the call ends UNAVAILABLE."""
    age, grace = 0.3, 1.0
    server = start_server(connections={"max_age_seconds": age, "max_age_grace_seconds": grace})
    health = health_pb2_grpc.HealthStub(channel(server, token=None))
    started = time.monotonic()
    watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=age + grace + MARGIN)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as ended:
        next(watch)
    lasted = time.monotonic() - started
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert lasted >= (age + grace) * 0.9  # grpc jitters the age by up to 10%


# --- streams per connection -------------------------------------------------------------


def test_calls_beyond_the_per_connection_stream_cap_wait_for_a_free_one(start_server, channel):
    """With one stream allowed per connection, a second call waits (it does not fail)
    while a health watch holds the stream, and completes once the watch ends."""
    server = start_server(connections={"max_concurrent_streams": 1})
    health = health_pb2_grpc.HealthStub(channel(server, token=None))
    watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    check = health.Check.future(health_pb2.HealthCheckRequest(), timeout=10)
    with pytest.raises(grpc.FutureTimeoutError):
        check.result(timeout=0.5)  # waiting for the stream the watch holds
    watch.cancel()
    assert check.result(timeout=5).status == health_pb2.HealthCheckResponse.SERVING
