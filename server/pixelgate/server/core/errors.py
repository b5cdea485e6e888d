"""Domain errors: what a caller is told when a call fails, free of gRPC.

Each error class names its status with a StatusCode (the gRPC code names and
numbers, as plain data); the one table from StatusCode to grpc.StatusCode, and
the only code that aborts calls, is the error interceptor (rpc/error_mapping.py).
Messages are written for callers: they name the field or limit involved and
never carry tokens, keys, prompts or exception text.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from google.protobuf.message import Message
from google.rpc import error_details_pb2


class StatusCode(enum.Enum):
    """The status a ServiceError ends its call with: gRPC's code names and numbers."""

    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class ServiceError(Exception):
    """A failure the caller should see, with a status code and a safe message.

    `details` are google.rpc error-detail messages (BadRequest, RetryInfo,
    QuotaFailure) sent as rich status; `trailers` plain trailing metadata.
    """

    code: ClassVar[StatusCode] = StatusCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        trailers: Sequence[tuple[str, str]] = (),
        details: Sequence[Message] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.trailers = tuple(trailers)
        self.details = tuple(details)


class InvalidArgument(ServiceError):
    """The request breaks a documented bound; the message names the field and the bound."""

    code = StatusCode.INVALID_ARGUMENT


@dataclass(frozen=True)
class FieldViolation:
    """One broken bound: which field, and what it must be."""

    field: str
    description: str


class RequestInvalid(InvalidArgument):
    """INVALID_ARGUMENT carrying every violation found, in the message and as BadRequest."""

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in violations
            ]
        )
        super().__init__("; ".join(v.description for v in violations), details=[bad_request])
        self.violations = tuple(violations)


class NotFound(ServiceError):
    """The request names something (a model) the server does not have."""

    code = StatusCode.NOT_FOUND


class Unauthenticated(ServiceError):
    """No usable credentials: the access token is missing, malformed, expired or forged."""

    code = StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    """The caller is known but not allowed to do this (a scope or policy is missing)."""

    code = StatusCode.PERMISSION_DENIED


class ResourceExhausted(ServiceError):
    """Over the caller's quota or rate: every replica would refuse it too, so clients
    do not retry it blindly (only after the delay the refusal names, if any)."""

    code = StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    """The server cannot take the call now (shutting down, a dependency is down)."""

    code = StatusCode.UNAVAILABLE


PUSHBACK_TRAILER = "grpc-retry-pushback-ms"
"""gRPC's server-pushback trailer (gRFC A6): how long a retrying client waits first."""


DRAINING_MESSAGE = "this replica is shutting down; retry on another"
"""What a draining replica answers a call it will not take (ReplicaBusy: retried elsewhere)."""


class ReplicaBusy(Unavailable):
    """This replica cannot take the job now (its queue is full); another replica may.

    UNAVAILABLE with `grpc-retry-pushback-ms`, which a client's service-config
    retry policy honours: it tries again after that delay, on the next healthy
    replica. Never used for a caller over its own rate or quota, which would
    fail the same way on every replica (that stays RESOURCE_EXHAUSTED).
    """

    def __init__(self, message: str, *, pushback_ms: int = 100) -> None:
        super().__init__(message, trailers=[(PUSHBACK_TRAILER, str(pushback_ms))])
        self.pushback_ms = pushback_ms


class DeadlineExceeded(ServiceError):
    """The call's deadline would pass before the work could finish."""

    code = StatusCode.DEADLINE_EXCEEDED


INTERNAL_MESSAGE = "internal error"
"""All a caller learns of an unexpected failure; the details go to the server log."""

__all__ = [
    "DRAINING_MESSAGE",
    "INTERNAL_MESSAGE",
    "PUSHBACK_TRAILER",
    "DeadlineExceeded",
    "FieldViolation",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ReplicaBusy",
    "RequestInvalid",
    "ResourceExhausted",
    "ServiceError",
    "StatusCode",
    "Unauthenticated",
    "Unavailable",
]
