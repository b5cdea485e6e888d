"""Quota metadata: the limits a call drew on reach the caller once; no chain, no metadata."""

from __future__ import annotations

import asyncio
from typing import Any

from pixelgate.server.core.quota import Decision, Limit
from pixelgate.server.limits.quota_metadata import send_quota_metadata, set_quota_trailers
from pixelgate.server.rpc.call_record import open_record

REQUESTS = Limit("requests", capacity=30, per_second=0.5)


class Context:
    """Keeps the metadata a servicer sends."""

    def __init__(self) -> None:
        self.initial: list[Any] = []
        self.trailing: list[Any] = []

    async def send_initial_metadata(self, metadata: Any) -> None:
        self.initial.append(metadata)

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailing.append(metadata)


EXPECTED = [("ratelimit-policy", '"requests";q=30;w=60'), ("ratelimit", '"requests";r=29;t=2')]


def test_a_stream_gets_its_quota_once_before_its_first_message() -> None:
    """However often the data plane asks, the initial metadata goes out once."""
    context = Context()

    async def call() -> None:
        open_record("/m", None).quota.append((REQUESTS, Decision(True, 29.0, 0.0, 2.0)))
        await send_quota_metadata(context)
        await send_quota_metadata(context)

    asyncio.run(call())
    assert context.initial == [EXPECTED]


def test_a_unary_call_gets_its_quota_in_the_trailers() -> None:
    """ListModels' caller reads what is left of its rate limit in the trailing metadata."""
    context = Context()

    async def call() -> None:
        open_record("/m", None).quota.append((REQUESTS, Decision(True, 29.0, 0.0, 2.0)))
        set_quota_trailers(context)

    asyncio.run(call())
    assert context.trailing == [EXPECTED]


def test_served_without_the_chain_a_call_sends_no_quota() -> None:
    """A server with no interceptors (the chain benchmark's bare one) drew on no limits."""
    context = Context()
    set_quota_trailers(context)
    asyncio.run(send_quota_metadata(context))
    assert context.initial == context.trailing == []
