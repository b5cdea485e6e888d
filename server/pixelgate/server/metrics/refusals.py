"""Why a call was refused, read from the error it ended with: a reason and a detail.

Derived once, as a refused call ends (the error mapping hands its error over), rather
than counted where each refusal is raised: a call that succeeds pays nothing. Both
values come from fixed tables or fixed names (limit names, error classes), never from
the message's variable parts, so no label holds a token, a prompt or a caller's input.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.rpc import error_details_pb2

from pixelgate.server.core.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ReplicaBusy,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    Unavailable,
)


@dataclass(frozen=True)
class Refusal:
    """A refusal's `reason` (rate_limit, authentication, ...) and its `detail`."""

    reason: str
    detail: str


# Authentication failures by kind. The messages are the fixed ones the security pieces
# raise (security/authentication.py, token_verifier.py, client_identity.py); one not
# listed here is counted as "invalid".
_AUTHENTICATION_KINDS: dict[str, str] = {
    "missing bearer access token": "missing_token",
    "more than one authorization header": "malformed_header",
    "malformed authorization header": "malformed_header",
    "authorization header must be 'Bearer <access token>'": "malformed_header",
    "access token too large": "malformed_token",
    "malformed access token": "malformed_token",
    "access token uses unsupported critical headers": "malformed_token",
    "access token type (typ) is not accepted": "malformed_token",
    "access token lacks a required claim": "malformed_token",
    "access token subject (sub) is missing": "malformed_token",
    "access token scope claim is malformed": "malformed_token",
    "access token confirmation (cnf) is not supported": "malformed_token",
    "access token expired": "expired",
    "access token not yet valid": "not_yet_valid",
    "access token is not for this service (aud)": "wrong_audience",
    "access token issuer is not trusted": "untrusted_issuer",
    "access token algorithm is not allowed": "algorithm_not_allowed",
    "access token signature is not valid": "bad_signature",
    "access token signing key is not known": "unknown_key",
    "access token is bound to another client certificate": "certificate_binding",
    "access token must be bound to the client certificate": "certificate_binding",
}

# Message prefixes of the refusals that name something variable after them.
_PERMISSION_KINDS: tuple[tuple[str, str], ...] = (
    ("access token lacks scope", "scope"),
    ("method is not open to any caller", "scope"),
    ("request exceeds policy", "policy"),
    ("client certificate identity is not allowed", "certificate"),
)
_BINDING_MISMATCH = "does not match the client certificate"
_CONCURRENCY_CAP = "at most "  # limits/gpu_quota.py: "at most N generations per caller ..."
_MEMORY_GUARD = "this request needs about "  # engine/memory_guard.py
_DRAINING = "shutting down"  # engine/engine.py's DRAINING_MESSAGE


def _quota_limit(error: ServiceError) -> str | None:
    # limits/quota_fields.py names the limit as "<who>:<limit name>" in QuotaFailure.
    for detail in error.details:
        if isinstance(detail, error_details_pb2.QuotaFailure) and detail.violations:
            return detail.violations[0].subject.rpartition(":")[2] or "unnamed"
    return None


def _authentication_kind(message: str) -> str:
    kind = _AUTHENTICATION_KINDS.get(message)
    if kind is not None:
        return kind
    return "certificate_binding" if message.endswith(_BINDING_MISMATCH) else "invalid"


def _permission_kind(message: str) -> str:
    for prefix, kind in _PERMISSION_KINDS:
        if message.startswith(prefix):
            return kind
    return "other"


def refusal(error: ServiceError) -> Refusal | None:
    """The refusal `error` stands for; None for a failure that is not one (INTERNAL)."""
    message = error.message
    if isinstance(error, ResourceExhausted):
        limit = _quota_limit(error)
        if limit is not None:
            return Refusal("rate_limit", limit)
        if message.startswith(_CONCURRENCY_CAP):
            return Refusal("rate_limit", "concurrency")
        if message.startswith(_MEMORY_GUARD):
            return Refusal("memory_guard", "budget")
        return Refusal("resource_exhausted", "other")
    if isinstance(error, Unauthenticated):
        return Refusal("authentication", _authentication_kind(message))
    if isinstance(error, PermissionDenied):
        return Refusal("permission", _permission_kind(message))
    if isinstance(error, InvalidArgument):
        return Refusal("validation", "request")
    if isinstance(error, NotFound):
        return Refusal("validation", "unknown_model")
    if isinstance(error, DeadlineExceeded):
        return Refusal("admission_deadline", "estimate")
    if isinstance(error, ReplicaBusy):
        return Refusal("busy", "draining" if _DRAINING in message else "queue_full")
    if isinstance(error, Unavailable):
        return Refusal("unavailable", "dependency")
    return None


__all__ = ["Refusal", "refusal"]
