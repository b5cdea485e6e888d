"""The per-call record: what one call did, in the call's one context variable.

The interceptor chain opens a record as each call starts
(`MethodChain.open`, in every wrapped handler), and nothing else sets one. The chain's
steps, the servicer and the data plane read it with current_record() and add
the facts they learn (the caller, the limits drawn on, the GPU cost, the image
parameters and digests) for the audit line and the quota metadata. Each call
runs in its own task, so each sees its own record; code that asks for one
outside a call gets NoCallRecord, never a detached record.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from pixelgate.server.core.errors import Unauthenticated
from pixelgate.server.core.principal import Principal
from pixelgate.server.core.quota import Decision, Limit

Metadata = tuple[tuple[str, str | bytes], ...]


@dataclass(slots=True)
class CallRecord:
    """One call's facts, as they become known."""

    method: str
    peer: str = ""
    """The caller's address as gRPC names it (the audit wrapper notes it)."""
    metadata: Metadata | None = field(default=None, repr=False)  # it holds the bearer token
    """The request metadata gRPC read to find the handler; None: ask the context."""
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
    """Who called, once authenticated (bind_principal)."""
    prompt_sha256: str | None = None
    image_sha256s: list[str] = field(default_factory=list)
    initial_metadata_sent: bool = False
    reason: str | None = None
    """Why the call ended, where its status alone does not say (e.g. "stalled_reader")."""
    trace_id: str | None = None
    """The call's W3C trace id (32 hex digits), when it belongs to a trace."""
    received_bytes: int = 0
    """Request message bytes the chain was handed (as serialized; gRFC A66's size)."""
    sent_bytes: int = 0
    """Response message bytes, as serialized (the chain serializes them)."""


class NoCallRecord(RuntimeError):
    """Code that belongs to a call asked for its record outside one (a bug)."""


_current: ContextVar[CallRecord] = ContextVar("pixelgate_call_record")


def open_record(method: str, metadata: Metadata | None) -> CallRecord:
    """Starts the current call's record: the interceptor chain's to call, once per call."""
    record = CallRecord(method=method, metadata=metadata)
    _current.set(record)
    return record


def current_record() -> CallRecord:
    """The current call's record; NoCallRecord outside a call."""
    try:
        return _current.get()
    except LookupError:
        raise NoCallRecord("no call record: this runs only inside a call") from None


def bind_principal(principal: Principal) -> None:
    """Makes `principal` the current call's caller."""
    current_record().principal = principal


def current_principal() -> Principal:
    """The current call's caller; fails closed when nothing authenticated it."""
    principal = current_record().principal
    if principal is None:
        raise Unauthenticated("missing bearer access token")
    return principal


__all__ = [
    "CallRecord",
    "Metadata",
    "NoCallRecord",
    "bind_principal",
    "current_principal",
    "current_record",
    "open_record",
]
