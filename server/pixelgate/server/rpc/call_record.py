"""What one call did, collected while it runs, for the audit line and quota metadata.

The audit interceptor opens a record per call; the pieces the call passes
through add to it (the rate limits it drew on, the GPU cost charged, the
image parameters, digests, the authenticated principal). It lives in a
context variable: each call runs in its own task.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc.aio

from pixelgate.server.limits.buckets import Decision, Limit
from pixelgate.server.limits.quota_fields import quota_metadata

if TYPE_CHECKING:
    from pixelgate.server.core.principal import Principal


@dataclass(slots=True)
class CallRecord:
    """One call's facts, as they become known."""

    method: str
    peer: str
    started: float = field(default_factory=time.perf_counter)
    duration: float = 0.0
    """Seconds the call took (set as it ends)."""
    quota: list[tuple[Limit, Decision]] = field(default_factory=list)
    """Limits drawn on and their decisions, for the `ratelimit` metadata."""
    cost_charged: float = 0.0
    """GPU cost units charged, after any refund."""
    parameters: dict[str, Any] = field(default_factory=dict)
    """Validated image parameters (no prompt)."""
    principal: Principal | None = None
    """Who called, once authenticated (see principal.py)."""
    prompt_sha256: str | None = None
    image_sha256s: list[str] = field(default_factory=list)
    initial_metadata_sent: bool = False
    reason: str | None = None
    """Why the call ended, where its status alone does not say (e.g. "stalled_reader")."""


_current: ContextVar[CallRecord | None] = ContextVar("pixelgate_call_record", default=None)


def open_record(method: str, peer: str) -> CallRecord:
    """Starts the current call's record."""
    record = CallRecord(method=method, peer=peer)
    _current.set(record)
    return record


def current_record() -> CallRecord:
    """The current call's record (a detached one outside any call, e.g. in unit tests)."""
    record = _current.get()
    if record is None:
        record = CallRecord(method="", peer="")
        _current.set(record)
    return record


async def send_quota_metadata(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Sends the remaining quota as initial metadata, once, before the first response.

    For a server stream: the caller learns its quota before the first event.
    """
    record = current_record()
    if record.initial_metadata_sent:
        return
    record.initial_metadata_sent = True
    metadata = quota_metadata(record.quota)
    if metadata:
        await context.send_initial_metadata(metadata)


def set_quota_trailers(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Puts the remaining quota in the trailing metadata of a unary call.

    A unary response's headers, message and trailers reach the caller together;
    custom initial metadata would cost grpcio a batch and a write of its own
    (measured: about 8% of a trivial call's throughput).
    """
    metadata = quota_metadata(current_record().quota)
    if metadata:
        context.set_trailing_metadata(metadata)


__all__ = [
    "CallRecord",
    "current_record",
    "open_record",
    "send_quota_metadata",
    "set_quota_trailers",
]
