"""Monitoring: one log line per call, so usage and abuse can be seen.

It records who called what, with which outcome and how long it took; never a
token, a key or a prompt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio

from pixelgate.server.interception import CallInterceptor
from pixelgate.server.principal import maybe_current_principal

log = logging.getLogger("pixelgate.access")


class AccessLogInterceptor(CallInterceptor):
    """Logs method, caller, peer, status and duration of every call it wraps."""

    @asynccontextmanager
    async def around(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        started = time.perf_counter()
        code = "OK"
        try:
            yield
        except grpc.aio.AbortError:
            code = _code_name(context.code())
            raise
        except BaseException:
            code = "CANCELLED"
            raise
        finally:
            principal = maybe_current_principal()
            log.info(
                "call method=%s status=%s duration_ms=%.1f subject=%s client_id=%s cert=%s peer=%s",
                method,
                code,
                (time.perf_counter() - started) * 1000,
                principal.subject if principal else "-",
                (principal.client_id if principal else None) or "-",
                (principal.certificate_identity if principal else None) or "-",
                context.peer(),
            )


def _code_name(code: grpc.StatusCode | None) -> str:
    return code.name if code is not None else "UNKNOWN"


__all__ = ["AccessLogInterceptor"]
