"""The client's rotating channel: renewed TLS files move new calls, never open ones.

No server is needed: a call on a closed channel fails at once with ValueError,
one on an open channel to nowhere fails with an RpcError. The leased "stubs" are
a health stub.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pixelgate.client.rotating_channel import RotatingChannel
from pixelgate.dev.pki import Issued, issue_client_certificate, make_ca

CA = make_ca("unit CA")
NOWHERE = "127.0.0.1:1"


class FakeClock:
    """Monotonic seconds a test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _write(tmp_path: Path, issued: Issued, key_pem: bytes | None = None) -> dict[str, Path]:
    files = {name: tmp_path / name for name in ("ca_file", "cert_file", "key_file")}
    files["ca_file"].write_bytes(CA.certificate_pem)
    files["cert_file"].write_bytes(issued.certificate_pem)
    files["key_file"].write_bytes(key_pem or issued.key_pem)
    return files


def _is_closed(stub: health_pb2_grpc.HealthStub) -> bool:
    try:
        stub.Check(health_pb2.HealthCheckRequest(), timeout=0.01)
    except ValueError:  # "Cannot invoke RPC on closed channel!"
        return True
    except grpc.RpcError:
        return False
    raise AssertionError("a call to nowhere succeeded")


def test_renewed_files_move_new_calls_and_the_old_channel_closes_after_its_last_call(tmp_path):
    """A call open across a renewal keeps its channel; it is closed once that call ends."""
    clock = FakeClock()
    rotating = RotatingChannel(
        NOWHERE,
        health_pb2_grpc.HealthStub,
        **_write(tmp_path, issue_client_certificate(CA)),
        check_interval=1,
        clock=clock,
    )
    with rotating.lease() as old:
        _write(tmp_path, issue_client_certificate(CA))
        clock.now += 1
        with rotating.lease() as new:
            assert new is not old
        assert not _is_closed(old)
    assert _is_closed(old)
    with rotating.lease() as again:
        assert again is new
    rotating.close()
    assert _is_closed(new)


def test_files_are_looked_at_once_per_check_interval(tmp_path):
    """Within the check interval a renewal is not seen yet."""
    clock = FakeClock()
    rotating = RotatingChannel(
        NOWHERE,
        health_pb2_grpc.HealthStub,
        **_write(tmp_path, issue_client_certificate(CA)),
        check_interval=5,
        clock=clock,
    )
    with rotating.lease() as first:
        pass
    _write(tmp_path, issue_client_certificate(CA))
    clock.now += 1
    with rotating.lease() as same:
        assert same is first
    clock.now += 4
    with rotating.lease() as renewed:
        assert renewed is not first
    rotating.close()


@pytest.mark.parametrize("spoil", ["garbage", "another key"])
def test_files_that_do_not_load_keep_the_channel_and_are_counted_once(tmp_path, spoil):
    """Garbage or a key that is not the certificate's: calls stay on the working channel."""
    clock = FakeClock()
    issued = issue_client_certificate(CA)
    rotating = RotatingChannel(
        NOWHERE,
        health_pb2_grpc.HealthStub,
        **_write(tmp_path, issued),
        check_interval=1,
        clock=clock,
    )
    with rotating.lease() as first:
        pass
    key = b"garbage" if spoil == "garbage" else issue_client_certificate(CA).key_pem
    _write(tmp_path, issued, key_pem=key)
    for _ in range(3):
        clock.now += 1
        with rotating.lease() as channel:
            assert channel is first
    assert rotating.rejected_rotations == 1
    assert not _is_closed(first)
    rotating.close()


def test_close_also_closes_a_replaced_channel_with_a_call_still_open(tmp_path):
    """Closing the client cancels every call, including one open on a channel already replaced."""
    clock = FakeClock()
    rotating = RotatingChannel(
        NOWHERE,
        health_pb2_grpc.HealthStub,
        **_write(tmp_path, issue_client_certificate(CA)),
        check_interval=1,
        clock=clock,
    )
    with rotating.lease() as old:
        _write(tmp_path, issue_client_certificate(CA))
        clock.now += 1
        with rotating.lease() as new:
            pass
        rotating.close()
        assert _is_closed(old)
        assert _is_closed(new)
