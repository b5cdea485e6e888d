"""The base every pixelgate interceptor builds on.

An interceptor acts *around* a call: it rebuilds the method handler with the
same request/response shape (unary or streaming on either side), so a server
stream keeps streaming through it and a check can refuse a call before the
handler's first message. Subclasses override one method.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import grpc
import grpc.aio

Around = Callable[[grpc.aio.ServicerContext[Any, Any]], AbstractAsyncContextManager[None]]
MethodFilter = Callable[[str], bool]
"""Says, from the full method name (`/package.Service/Method`), whether a piece applies."""


def every_method(method: str) -> bool:
    """A MethodFilter that applies to every method."""
    return True


async def _responses(result: Any) -> AsyncIterator[Any]:
    # A streaming handler may be an async generator, a plain iterator, or a
    # coroutine that writes with `context.write()` and returns None.
    if inspect.isasyncgen(result) or hasattr(result, "__aiter__"):
        async for response in result:
            yield response
    elif inspect.isawaitable(result):
        await result
    elif result is not None:
        for response in result:
            yield response


async def _value(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


def wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any], around: Around
) -> grpc.RpcMethodHandler[Any, Any]:
    """Returns `handler` with every call run inside `around(context)`, same shape."""
    request_deserializer = handler.request_deserializer
    response_serializer = handler.response_serializer

    if handler.unary_unary is not None:
        unary_unary = handler.unary_unary

        async def wrapped_unary_unary(request: Any, context: Any) -> Any:
            async with around(context):
                return await _value(unary_unary(request, context))

        return grpc.unary_unary_rpc_method_handler(
            wrapped_unary_unary, request_deserializer, response_serializer
        )

    if handler.unary_stream is not None:
        unary_stream = handler.unary_stream

        async def wrapped_unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            async with around(context):
                async for response in _responses(unary_stream(request, context)):
                    yield response

        return grpc.unary_stream_rpc_method_handler(
            wrapped_unary_stream, request_deserializer, response_serializer
        )

    if handler.stream_unary is not None:
        stream_unary = handler.stream_unary

        async def wrapped_stream_unary(requests: Any, context: Any) -> Any:
            async with around(context):
                return await _value(stream_unary(requests, context))

        return grpc.stream_unary_rpc_method_handler(
            wrapped_stream_unary, request_deserializer, response_serializer
        )

    stream_stream = handler.stream_stream
    assert stream_stream is not None, "a handler has one of the four shapes"

    async def wrapped_stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
        async with around(context):
            async for response in _responses(stream_stream(requests, context)):
                yield response

    return grpc.stream_stream_rpc_method_handler(
        wrapped_stream_stream, request_deserializer, response_serializer
    )


class CallInterceptor(grpc.aio.ServerInterceptor, abc.ABC):  # type: ignore[type-arg]
    """Runs `around(method, context)` around every call of the methods it applies to."""

    def __init__(self, applies_to: MethodFilter = every_method) -> None:
        self._applies_to = applies_to

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        # `continuation` yields None for a method no service implements (the
        # stubs say otherwise); gRPC then answers UNIMPLEMENTED.
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not self._applies_to(method):
            return handler
        return wrap_handler(handler, lambda context: self.around(method, context))

    @abc.abstractmethod
    def around(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AbstractAsyncContextManager[None]:
        """The context a call of `method` runs in."""


class CallGuard(CallInterceptor):
    """An interceptor that admits or refuses a call before its handler runs."""

    @asynccontextmanager
    async def around(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        await self.admit(method, context)
        yield

    @abc.abstractmethod
    async def admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Returns to let the call through; raises a ServiceError to refuse it."""


__all__ = ["Around", "CallGuard", "CallInterceptor", "MethodFilter", "every_method", "wrap_handler"]
