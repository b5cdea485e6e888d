"""Refusals read from the errors the real pieces raise: a reason and a bounded detail."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pixelgate.server.core.errors import (
    DeadlineExceeded,
    FieldViolation,
    NotFound,
    PermissionDenied,
    ReplicaBusy,
    RequestInvalid,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from pixelgate.server.core.quota import Decision, Limit
from pixelgate.server.engine.engine import DRAINING_MESSAGE
from pixelgate.server.engine.memory_guard import MemoryGuard
from pixelgate.server.limits.quota_fields import beyond_capacity, over_limit
from pixelgate.server.metrics import refusals
from pixelgate.server.metrics.refusals import Refusal, refusal
from pixelgate.server.security.authentication import bearer_token

SECURITY = Path(__file__).resolve().parents[3] / "server" / "pixelgate" / "server" / "security"


def _raised(call: object, *args: object) -> ServiceError:
    with pytest.raises(ServiceError) as raised:
        call(*args)  # type: ignore[operator]
    return raised.value


def test_rate_limits_are_named_by_their_limit() -> None:
    """The limit's name comes from the refusal's QuotaFailure, whichever limit it was."""
    requests = Limit("requests", capacity=10, per_second=1)
    denied = Decision(allowed=False, remaining=0, retry_after=3, reset_after=10)
    assert refusal(over_limit(requests, denied, who="caller", unit="calls")) == Refusal(
        "rate_limit", "requests"
    )
    gpu = Limit("gpu", capacity=10, per_second=1)
    assert refusal(beyond_capacity(gpu, 99, who="caller", unit="units")) == Refusal(
        "rate_limit", "gpu"
    )


def test_the_memory_guard_refusal_is_told_from_a_rate_limit() -> None:
    """Both are RESOURCE_EXHAUSTED; only one is the memory guard."""
    guard = MemoryGuard(100 * 1024 * 1024)
    guard.describe_model("m", 10 * 1024 * 1024, 6000 * 1024 * 1024)
    assert refusal(_raised(guard.check, "m", 1024, 1024, 1)) == Refusal("memory_guard", "budget")


@pytest.mark.parametrize(
    ("metadata", "kind"),
    [
        ((), "missing_token"),
        ((("authorization", "Basic abc"),), "malformed_header"),
        ((("authorization", "Bearer a"), ("authorization", "Bearer b")), "malformed_header"),
    ],
)
def test_authentication_failures_are_told_by_kind(metadata: tuple[object, ...], kind: str) -> None:
    """The header's faults, as security/authentication.py raises them."""
    assert refusal(_raised(bearer_token, metadata)) == Refusal("authentication", kind)


def test_every_authentication_kind_names_a_message_the_security_pieces_raise() -> None:
    """A reworded message would fall back to "invalid": this catches it here."""
    literals = {
        node.value
        for path in SECURITY.glob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    unknown = set(refusals._AUTHENTICATION_KINDS) - literals
    assert not unknown, f"no longer raised: {sorted(unknown)}"
    assert refusal(Unauthenticated("something new")) == Refusal("authentication", "invalid")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (PermissionDenied("access token lacks scope images:generate"), ("permission", "scope")),
        (PermissionDenied("request exceeds policy 'free': 4 steps"), ("permission", "policy")),
        (
            PermissionDenied("client certificate identity is not allowed"),
            ("permission", "certificate"),
        ),
        (RequestInvalid([FieldViolation("width", "a multiple of 8")]), ("validation", "request")),
        (NotFound("model not found"), ("validation", "unknown_model")),
        (DeadlineExceeded("the deadline would pass"), ("admission_deadline", "estimate")),
        (ReplicaBusy(DRAINING_MESSAGE), ("busy", "draining")),
        (ReplicaBusy("server busy: the generation queue is full"), ("busy", "queue_full")),
        (Unavailable("rate limiting is unavailable"), ("unavailable", "dependency")),
    ],
)
def test_each_refusal_has_its_reason(error: ServiceError, expected: tuple[str, str]) -> None:
    """Permission, validation, admission and availability refusals, with bounded details."""
    assert refusal(error) == Refusal(*expected)


def test_a_failure_that_is_no_refusal_is_not_counted() -> None:
    """INTERNAL is a fault of the server, not a refusal."""
    assert refusal(ServiceError("internal error")) is None
