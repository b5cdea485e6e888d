"""The status a call ended with, as its caller sees it: one rule for every wrapper that
reports it (audit line, call metrics, the call's span)."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio


def call_status(
    context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None
) -> grpc.StatusCode:
    """The status of a call that ended with `error` (None: it succeeded).

    An abort carries its code in the context; any other exception reaches the
    caller as UNKNOWN; a BaseException that is not an Exception is the
    caller going away (the task was cancelled).
    """
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, grpc.aio.AbortError):
        code: grpc.StatusCode | None = context.code()  # None: aborted without a code
        return code if code is not None else grpc.StatusCode.UNKNOWN
    if isinstance(error, Exception):
        return grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.CANCELLED


__all__ = ["call_status"]
