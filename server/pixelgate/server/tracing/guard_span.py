"""A guard run inside a child span of its call (token authentication: a key fetch shows).

Only on the methods asked for: a span costs tens of microseconds to record and
export, more than a cached token's whole check on a trivial call.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc.aio
from opentelemetry.trace import Span

from pixelgate.server.rpc.interception import CallGuard, MethodFilter, Pending, every_method
from pixelgate.server.tracing.spans import call_trace, failed


class SpannedGuard(CallGuard):
    """Runs `guard` inside a span named `name` on the methods `spanned` names, when the call
    records spans; a refusal marks the span failed with the error's type. Applies where
    `guard` does."""

    def __init__(self, guard: CallGuard, name: str, spanned: MethodFilter = every_method) -> None:
        super().__init__(guard.applies_to)
        self._guard = guard
        self._name = name
        self._spanned = spanned

    def admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Pending:
        call = call_trace() if self._spanned(method) else None
        if call is None:
            return self._guard.admit(method, context)
        span = call.start(self._name)
        try:
            pending = self._guard.admit(method, context)
        except BaseException as error:
            if isinstance(error, Exception):  # not a cancelled call
                failed(span, error)
            span.end()
            raise
        if pending is None:
            span.end()
            return None
        return self._finish(span, pending)

    async def _finish(self, span: Span, pending: Awaitable[None]) -> None:
        try:
            await pending
        except Exception as error:
            failed(span, error)
            raise
        finally:
            span.end()


__all__ = ["SpannedGuard"]
