"""Typed errors: one exception class per status a caller can get.

Catch `PixelgateError` for all of them, or a subclass for one case:
`RateLimited.retry_after` says when to come back, `InvalidArgument.violations`
lists every bad field. Both come from the server's rich status details
(google.rpc.RetryInfo, google.rpc.BadRequest), with the `retry-after` trailer
as a fallback. `TokenEndpointError` comes before any call: the OAuth 2.0 token
endpoint did not give a `ClientCredentials` source its token.
"""

from __future__ import annotations

from typing import cast

import grpc
from google.rpc import error_details_pb2, status_pb2

PUSHBACK_TRAILER = "grpc-retry-pushback-ms"
"""A replica that did not run the call says when to retry elsewhere (gRPC's retry reads it)."""


class PixelgateError(Exception):
    """A call failed; `code` is the gRPC status and `details` the server's message."""

    def __init__(self, code: grpc.StatusCode | None, details: str) -> None:
        super().__init__(f"{code.name if code else 'ERROR'}: {details}")
        self.code = code
        self.details = details


class Unauthenticated(PixelgateError):
    """The access token was missing, malformed, expired or not trusted."""


class PermissionDenied(PixelgateError):
    """The token is valid but lacks the scope (or policy) the call needs."""


class InvalidArgument(PixelgateError):
    """Request fields were out of bounds; `violations` holds (field, description) pairs."""

    def __init__(
        self, code: grpc.StatusCode | None, details: str, violations: list[tuple[str, str]]
    ) -> None:
        super().__init__(code, details)
        self.violations = violations


class NotFound(PixelgateError):
    """The requested model does not exist."""


class RateLimited(PixelgateError):
    """Over the caller's rate or quota (on every replica alike); retry after `retry_after`
    seconds if set."""

    def __init__(
        self, code: grpc.StatusCode | None, details: str, retry_after: float | None
    ) -> None:
        super().__init__(code, details)
        self.retry_after = retry_after


class Unavailable(PixelgateError):
    """The server could not be reached, refused the TLS handshake, or cannot take the call
    now (queue full, shutting down), even after the channel's retries on other replicas.

    `pushback` (seconds) is set when the replica itself said so (`grpc-retry-pushback-ms`):
    it did not run the job, and another replica may.
    """

    def __init__(
        self, code: grpc.StatusCode | None, details: str, pushback: float | None = None
    ) -> None:
        super().__init__(code, details)
        self.pushback = pushback


class DeadlineExceeded(PixelgateError):
    """The call's timeout passed before it finished."""


class ServerError(PixelgateError):
    """The server failed unexpectedly (INTERNAL, UNKNOWN and the rest)."""


class IncompleteImage(PixelgateError):
    """The image bytes received do not match the size or SHA-256 the server announced."""

    def __init__(self, details: str) -> None:
        super().__init__(None, details)


class TokenEndpointError(PixelgateError):
    """The OAuth 2.0 token endpoint refused, failed or could not be reached: no call was made.

    `oauth_error` is the endpoint's RFC 6749 `error` code (e.g. `invalid_client`)
    and `http_status` its HTTP status; both None when it could not be reached.
    The message never holds the client secret.
    """

    def __init__(
        self, details: str, *, oauth_error: str | None = None, http_status: int | None = None
    ) -> None:
        super().__init__(None, details)
        self.oauth_error = oauth_error
        self.http_status = http_status

    def __str__(self) -> str:
        return self.details  # not a gRPC status: no status name in front


_BY_CODE: dict[grpc.StatusCode, type[PixelgateError]] = {
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def _trailer(call: grpc.Call, name: str) -> str | bytes | None:
    for key, value in call.trailing_metadata() or ():
        if key == name:
            return value
    return None


def _status_details(call: grpc.Call) -> list[object]:
    raw = _trailer(call, "grpc-status-details-bin")
    if not isinstance(raw, bytes):
        return []
    try:
        status = status_pb2.Status.FromString(raw)
    except ValueError:
        return []
    found: list[object] = []
    for packed in status.details:
        for kind in (
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
            error_details_pb2.QuotaFailure,
        ):
            if packed.Is(kind.DESCRIPTOR):
                message = kind()
                packed.Unpack(message)
                found.append(message)
    return found


def _retry_after(call: grpc.Call, details: list[object]) -> float | None:
    for detail in details:
        if isinstance(detail, error_details_pb2.RetryInfo):
            delay = detail.retry_delay
            return float(delay.seconds + delay.nanos / 1e9)
    value = _trailer(call, "retry-after")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _pushback(call: grpc.Call) -> float | None:
    value = _trailer(call, PUSHBACK_TRAILER)
    try:
        milliseconds = int(value) if value is not None else -1
    except (TypeError, ValueError):
        return None
    # gRPC reads a negative or malformed pushback as "do not retry"; so do we.
    return milliseconds / 1000 if milliseconds >= 0 else None


def error_from_rpc(error: grpc.RpcError) -> PixelgateError:
    """The typed error for a failed call."""
    # The RpcErrors that calls raise are also grpc.Call objects, with status.
    call = cast(grpc.Call, error)
    code = call.code()
    message = call.details() or str(error)
    details = _status_details(call)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return RateLimited(code, message, _retry_after(call, details))
    if code is grpc.StatusCode.UNAVAILABLE:
        return Unavailable(code, message, _pushback(call))
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        violations = [
            (violation.field, violation.description)
            for detail in details
            if isinstance(detail, error_details_pb2.BadRequest)
            for violation in detail.field_violations
        ]
        return InvalidArgument(code, message, violations)
    return _BY_CODE.get(code, ServerError)(code, message)


__all__ = [
    "DeadlineExceeded",
    "IncompleteImage",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "PixelgateError",
    "RateLimited",
    "ServerError",
    "TokenEndpointError",
    "Unauthenticated",
    "Unavailable",
    "error_from_rpc",
]
