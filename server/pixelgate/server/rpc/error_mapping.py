"""Turns exceptions into statuses, in one place.

A ServiceError becomes its own status (STATUSES: core's StatusCode to gRPC's)
and message, with its error details
packed as a google.rpc.Status in `grpc-status-details-bin` (what grpcio-status
and every other gRPC library read); anything unexpected is logged with its
traceback and becomes INTERNAL "internal error", so no exception text, path or
traceback ever reaches a caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc.aio
from google.protobuf import any_pb2
from google.rpc import status_pb2

from pixelgate.server.core.errors import INTERNAL_MESSAGE, ServiceError, StatusCode
from pixelgate.server.rpc.interception import CallWrapper, Pending

log = logging.getLogger("pixelgate.errors")

STATUSES: dict[StatusCode, grpc.StatusCode] = {
    code: grpc.StatusCode[code.name] for code in StatusCode
}
"""The gRPC status of each domain status code (same names, same numbers)."""


class ErrorMapping(CallWrapper):
    """Aborts each call that raised with the status its exception maps to.

    `on_refusal` hears of each ServiceError a call ended with (metrics count refusals
    there): a call that succeeds costs it nothing.
    """

    def __init__(self, on_refusal: Callable[[ServiceError], None] | None = None) -> None:
        self._on_refusal = on_refusal

    def exit(
        self,
        state: Any,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        error: BaseException | None,
    ) -> Pending:
        if error is None or isinstance(error, grpc.aio.AbortError):
            return None  # succeeded, or already carries its status
        if isinstance(error, ServiceError):
            if self._on_refusal is not None:
                self._on_refusal(error)
            return context.abort(
                STATUSES[error.code], error.message, trailing_metadata=_trailers(error)
            )
        if isinstance(error, Exception):
            log.error("unexpected failure in %s", method, exc_info=error)
            return context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
        return None  # cancellation and generator exits pass through untouched


def _trailers(error: ServiceError) -> tuple[tuple[str, str | bytes], ...]:
    if not error.details:
        return error.trailers
    status = status_pb2.Status(code=error.code.value, message=error.message)
    for detail in error.details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return (*error.trailers, ("grpc-status-details-bin", status.SerializeToString()))


__all__ = ["STATUSES", "ErrorMapping"]
