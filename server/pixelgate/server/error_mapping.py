"""Turns exceptions into statuses, in one place.

A ServiceError becomes its own status and message, with its error details
packed as a google.rpc.Status in `grpc-status-details-bin` (what grpcio-status
and every other gRPC library read); anything unexpected is logged with its
traceback and becomes INTERNAL "internal error", so no exception text, path or
traceback ever reaches a caller.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc.aio
from google.protobuf import any_pb2
from google.rpc import status_pb2

from pixelgate.server.errors import INTERNAL_MESSAGE, ServiceError
from pixelgate.server.interception import CallWrapper

log = logging.getLogger("pixelgate.errors")


class ErrorMapping(CallWrapper):
    """Aborts each call that raised with the status its exception maps to."""

    @asynccontextmanager
    async def around(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        try:
            yield
        except grpc.aio.AbortError:
            raise  # the call already carries its status
        except ServiceError as error:
            await context.abort(error.code, error.message, trailing_metadata=_trailers(error))
        except Exception:
            log.exception("unexpected failure in %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def _trailers(error: ServiceError) -> tuple[tuple[str, str | bytes], ...]:
    if not error.details:
        return error.trailers
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    for detail in error.details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return (*error.trailers, ("grpc-status-details-bin", status.SerializeToString()))


__all__ = ["ErrorMapping"]
