"""Turns exceptions into statuses, in one place.

A ServiceError becomes its own status and message; anything unexpected is
logged with its traceback and becomes INTERNAL "internal error", so no
exception text, path or traceback ever reaches a caller.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc.aio

from pixelgate.server.errors import INTERNAL_MESSAGE, ServiceError
from pixelgate.server.interception import CallInterceptor

log = logging.getLogger("pixelgate.errors")


class ErrorInterceptor(CallInterceptor):
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
            await context.abort(error.code, error.message, trailing_metadata=error.trailers)
        except Exception:
            log.exception("unexpected failure in %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


__all__ = ["ErrorInterceptor"]
