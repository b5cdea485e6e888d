"""Typed errors: one exception class per status a caller can get.

Catch `PixelgateError` for all of them, or a subclass for one case:
`RateLimited.retry_after` says when to come back.
"""

from __future__ import annotations

from typing import cast

import grpc


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
    """A request field was out of bounds; `details` names it."""


class NotFound(PixelgateError):
    """The requested model does not exist."""


class RateLimited(PixelgateError):
    """Over the caller's rate or the server is busy; retry after `retry_after` seconds if set."""

    def __init__(
        self, code: grpc.StatusCode | None, details: str, retry_after: float | None
    ) -> None:
        super().__init__(code, details)
        self.retry_after = retry_after


class Unavailable(PixelgateError):
    """The server could not be reached, refused the TLS handshake, or is shutting down."""


class DeadlineExceeded(PixelgateError):
    """The call's timeout passed before it finished."""


class ServerError(PixelgateError):
    """The server failed unexpectedly (INTERNAL, UNKNOWN and the rest)."""


class IncompleteImage(PixelgateError):
    """The image bytes received do not match the size or SHA-256 the server announced."""

    def __init__(self, details: str) -> None:
        super().__init__(None, details)


_BY_CODE: dict[grpc.StatusCode, type[PixelgateError]] = {
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def _retry_after(call: grpc.Call) -> float | None:
    for key, value in call.trailing_metadata() or ():
        if key == "retry-after":
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None


def error_from_rpc(error: grpc.RpcError) -> PixelgateError:
    """The typed error for a failed call."""
    # The RpcErrors that calls raise are also grpc.Call objects, with status.
    call = cast(grpc.Call, error)
    code = call.code()
    details = call.details() or str(error)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return RateLimited(code, details, _retry_after(call))
    return _BY_CODE.get(code, ServerError)(code, details)


__all__ = [
    "DeadlineExceeded",
    "IncompleteImage",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "PixelgateError",
    "RateLimited",
    "ServerError",
    "Unauthenticated",
    "Unavailable",
    "error_from_rpc",
]
