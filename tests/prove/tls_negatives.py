"""TLS negatives: no client certificate, a foreign CA's, an expired one, a server's, plaintext.

Each is refused (UNAVAILABLE: the handshake fails, no call reaches the
service); raw bytes that are not TLS get the connection closed. The server is
unharmed: a proper call succeeds afterwards.
"""

from __future__ import annotations

import socket
import time

import grpc

from pixelgate.client import PixelgateError
from pixelgate.v1 import image_service_pb2 as pb

from .calls import bearer, client, images_stub, status_of, tls_channel
from .fleet import ServerProcess
from .identity import TlsIdentity
from .plan import Context
from .report import Outcome

TIMEOUT_S = 5.0

NOT_TLS = (
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",  # h2c preface
    b"GET / HTTP/1.1\r\nHost: pixelgate\r\n\r\n",
    b"\x16\x03\x01\x00\x05garbage",  # a TLS record header and nonsense
)


def _list_models(channel: grpc.Channel, token: str) -> str:
    try:
        images_stub(channel).ListModels(
            pb.ListModelsRequest(),
            metadata=bearer(token),
            timeout=TIMEOUT_S,
        )
        return "OK"
    except grpc.RpcError as error:
        return status_of(error)
    finally:
        channel.close()


def _closed_on(server: ServerProcess, data: bytes) -> bool:
    """True when the server closes a connection that sent `data` instead of TLS."""
    with socket.create_connection(("127.0.0.1", server.port or 0), timeout=TIMEOUT_S) as raw:
        raw.sendall(data)
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if not raw.recv(4096):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def run(ctx: Context, out: Outcome) -> None:
    """Every bad client is refused at the handshake; the server serves on."""
    server = ctx.server("main")
    token = ctx.ids.mint("tls-negatives", scopes=["models:read"])
    ca = ctx.ids.pki.ca_cert.read_bytes()
    pki = ctx.ids.pki
    bad: dict[str, TlsIdentity] = {
        "foreign-ca": ctx.ids.foreign_client(),
        "expired": ctx.ids.expired_client(),
        "server-purpose": ctx.ids.server_auth_only_client(),
        "server-cert": TlsIdentity(pki.server_cert, pki.server_key),
    }
    channels: dict[str, grpc.Channel] = {
        "no-client-cert": grpc.secure_channel(
            server.target, grpc.ssl_channel_credentials(root_certificates=ca)
        ),
        "plaintext": grpc.insecure_channel(server.target),
        **{name: tls_channel(ctx.ids, server.target, tls=tls) for name, tls in bad.items()},
    }
    accepted = []
    for name, channel in channels.items():
        started = time.monotonic()
        status = _list_models(channel, token)
        out.record(status, time.monotonic() - started)
        if status != "UNAVAILABLE":
            accepted.append(f"{name}: {status}")
    out.check(not accepted, f"not refused: {accepted}")

    kept_open = 0
    for data in NOT_TLS:
        started = time.monotonic()
        closed = _closed_on(server, data)
        out.record("CLOSED" if closed else "KEPT_OPEN", time.monotonic() - started)
        kept_open += not closed
    out.check(kept_open == 0, f"{kept_open} connections speaking no TLS were kept open")

    with client(ctx.ids, server.target, token) as pixelgate:
        try:
            pixelgate.list_models(timeout=TIMEOUT_S)
            unharmed = "OK"
        except PixelgateError as error:
            unharmed = status_of(error)
    out.check(unharmed == "OK" and server.alive(), f"afterwards a proper call got {unharmed}")
