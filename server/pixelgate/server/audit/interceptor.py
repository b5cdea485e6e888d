"""The audit wrapper: hands every call it wraps, with its final status, to an audit sink.

Outermost in the chain, it sees the status the caller sees; the sink (the
composition root's AuditWriter) renders and writes the line off the loop.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import grpc.aio

from pixelgate.server.core.principal import Principal
from pixelgate.server.rpc.call_record import CallRecord, current_record
from pixelgate.server.rpc.call_status import call_status
from pixelgate.server.rpc.interception import CallWrapper


class AuditSink(Protocol):
    """Takes finished calls for their audit lines (cheaply: it runs on every call)."""

    def submit(self, record: CallRecord, status: str, principal: Principal | None) -> None:
        """Queues one finished call and its final status."""
        ...


class AuditLog(CallWrapper):
    """Audits every call it wraps (outermost, to see the final status)."""

    def __init__(self, sink: AuditSink) -> None:
        self._sink = sink

    def enter(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> CallRecord:
        record = current_record()  # opened by the chain as the call started
        record.peer = context.peer()
        return record

    def exit(
        self,
        state: CallRecord,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        error: BaseException | None,
    ) -> None:
        state.duration = time.perf_counter() - state.started
        self._sink.submit(state, call_status(context, error).name, state.principal)


__all__ = ["AuditLog", "AuditSink"]
