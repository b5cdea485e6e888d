"""The per-call record: opened once per call by the chain, and never conjured outside a call."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from pixelgate.server.audit.interceptor import AuditLog
from pixelgate.server.core.principal import Principal
from pixelgate.server.rpc.call_record import (
    CallRecord,
    NoCallRecord,
    bind_principal,
    current_principal,
    current_record,
)
from pixelgate.server.rpc.interception import InterceptorChain

METHOD = "/pixelgate.v1.ImageService/ListModels"
ALICE = Principal(issuer="https://issuer", subject="alice", scopes=frozenset())


class Context:
    """What the chain and the audit wrapper read from a call's context."""

    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> Any:
        return (("authorization", "Bearer secret"),)

    def code(self) -> None:
        return None


class Sink:
    """Keeps what the audit wrapper submits."""

    def __init__(self) -> None:
        self.submitted: list[tuple[CallRecord, str, Principal | None]] = []

    def submit(self, record: CallRecord, status: str, principal: Principal | None) -> None:
        self.submitted.append((record, status, principal))


def test_outside_a_call_there_is_no_record_and_no_caller() -> None:
    """Code that needs a call fails loudly outside one instead of writing to a stray record."""
    with pytest.raises(NoCallRecord):
        current_record()
    with pytest.raises(NoCallRecord):
        current_principal()
    with pytest.raises(NoCallRecord):
        bind_principal(ALICE)


def _chain_call(sink: Sink, peer: str) -> Any:
    seen: dict[str, Any] = {}

    async def handler(request: Any, context: Any) -> str:
        seen["record"] = current_record()
        bind_principal(ALICE)
        await asyncio.sleep(0)  # let the other call run in between
        seen["principal"] = current_principal()
        return "ok"

    async def call() -> dict[str, Any]:
        wrapped = chain.wrap(METHOD, grpc.unary_unary_rpc_method_handler(handler))
        await wrapped.unary_unary(b"", Context(peer))
        return seen

    chain = InterceptorChain([AuditLog(sink)], [])
    return call()


def test_each_call_gets_the_one_record_the_chain_opened_and_the_audit_line_reads_it() -> None:
    """Interleaved calls each see their own record; the audited record is the handler's."""
    sink = Sink()

    async def both() -> list[Any]:
        return await asyncio.gather(
            _chain_call(sink, "ipv4:10.0.0.1:1"), _chain_call(sink, "ipv4:10.0.0.2:2")
        )

    first, second = asyncio.run(both())
    assert first["record"] is not second["record"]
    assert [record for record, _, _ in sink.submitted] == [first["record"], second["record"]]
    assert [(r.method, r.peer, status) for r, status, _ in sink.submitted] == [
        (METHOD, "ipv4:10.0.0.1:1", "OK"),
        (METHOD, "ipv4:10.0.0.2:2", "OK"),
    ]
    assert all(principal == ALICE for _, _, principal in sink.submitted)
    assert first["principal"] == second["principal"] == ALICE


def test_a_record_never_prints_the_request_metadata() -> None:
    """The metadata it keeps holds the bearer token: a record in a log line must not show it."""
    record = CallRecord(METHOD, metadata=(("authorization", "Bearer secret"),))
    assert "secret" not in repr(record)
