"""Telling a caller its remaining quota as the call goes on (the metadata of success).

The limits a call drew on are in its record (rpc/call_record.py); these send
them as `ratelimit-policy` and `ratelimit` metadata (quota_fields.py).
"""

from __future__ import annotations

from typing import Any

import grpc.aio

from pixelgate.server.limits.quota_fields import quota_metadata
from pixelgate.server.rpc.call_record import CallRecord, NoCallRecord, current_record


def _record() -> CallRecord | None:
    try:
        return current_record()
    except NoCallRecord:  # served with no interceptor chain (the chain benchmark's bare server)
        return None


async def send_quota_metadata(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Sends the remaining quota as initial metadata, once, before the first response.

    For a server stream: the caller learns its quota before the first event.
    """
    record = _record()
    if record is None or record.initial_metadata_sent:
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
    record = _record()
    if record is None:
        return
    metadata = quota_metadata(record.quota)
    if metadata:
        context.set_trailing_metadata(metadata)


__all__ = ["send_quota_metadata", "set_quota_trailers"]
