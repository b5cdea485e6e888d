"""How rate limits are told to callers.

On success the remaining quota travels in metadata (initial metadata of a
stream, trailing metadata of a unary call); on refusal,
RESOURCE_EXHAUSTED carries `retry-after` (seconds), the `ratelimit` and
`ratelimit-policy` fields of draft-ietf-httpapi-ratelimit-headers, and rich
status details: google.rpc.RetryInfo with the delay and google.rpc.QuotaFailure
naming the limit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from pixelgate.server.core.errors import ResourceExhausted
from pixelgate.server.core.quota import Decision, Limit
from pixelgate.server.limits.buckets import whole_seconds

Metadata = list[tuple[str, str]]


@functools.lru_cache(maxsize=64)
def _policy_field(limits: tuple[Limit, ...]) -> str:
    return ", ".join(
        f'"{limit.name}";q={math.floor(limit.capacity)};w={math.ceil(limit.window_seconds)}'
        for limit in limits
    )


def policy_field(limits: Sequence[Limit]) -> str:
    """`ratelimit-policy`: each limit's quota (q) and window in seconds (w)."""
    return _policy_field(tuple(limits))  # the same few limits every call: made once


def status_field(entries: Sequence[tuple[Limit, Decision]]) -> str:
    """`ratelimit`: each limit's remaining units (r) and seconds until it resets (t)."""
    parts = []
    for limit, decision in entries:
        seconds = decision.reset_after if decision.allowed else decision.retry_after
        parts.append(f'"{limit.name}";r={math.floor(decision.remaining)};t={math.ceil(seconds)}')
    return ", ".join(parts)


def quota_metadata(entries: Sequence[tuple[Limit, Decision]]) -> Metadata:
    """The metadata that tells a caller where it stands."""
    if not entries:
        return []
    return [
        ("ratelimit-policy", policy_field([limit for limit, _ in entries])),
        ("ratelimit", status_field(entries)),
    ]


def over_limit(limit: Limit, decision: Decision, who: str, unit: str) -> ResourceExhausted:
    """RESOURCE_EXHAUSTED for a refused `decision`, with when to retry."""
    seconds = whole_seconds(decision.retry_after)
    description = (
        f"{limit.capacity:g} {unit} per {limit.window_seconds:g} s per {who}; retry in {seconds} s"
    )
    return ResourceExhausted(
        f"rate limit exceeded: {description}",
        trailers=[("retry-after", str(seconds)), *quota_metadata([(limit, decision)])],
        details=[
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds)),
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=f"{who}:{limit.name}", description=description
                    )
                ]
            ),
        ],
    )


def beyond_capacity(limit: Limit, cost: float, who: str, unit: str) -> ResourceExhausted:
    """RESOURCE_EXHAUSTED for a request larger than the whole bucket: no retry helps."""
    description = (
        f"this request costs {cost:.1f} {unit}, more than the {limit.capacity:g} a {who}"
        " may spend at once; ask for fewer pixels, steps or images"
    )
    return ResourceExhausted(
        description,
        details=[
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=f"{who}:{limit.name}", description=description
                    )
                ]
            )
        ],
    )


__all__ = ["beyond_capacity", "over_limit", "policy_field", "quota_metadata", "status_field"]
