"""The interceptor chain and the two kinds of step it runs.

The chain rebuilds each method handler with the same request/response shape
(unary or streaming on either side), so a server stream keeps streaming
through it and a guard can refuse a call before the handler's first message.
A step is a CallWrapper (runs around the whole call and sees how it ends) or
a CallGuard (admits or refuses before the handler); each overrides one method.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
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


class CallWrapper(abc.ABC):
    """A step around the whole call (audit, error mapping): it sees how the call ends."""

    def enter(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """Called as the call starts; what it returns comes back to exit()."""
        return None

    @abc.abstractmethod
    async def exit(
        self,
        state: Any,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        error: BaseException | None,
    ) -> None:
        """Called as the call ends, with what it raised (None: it succeeded).

        Raising replaces the error (error mapping raises the abort).
        """


class CallGuard(abc.ABC):
    """A step that admits or refuses a call before its handler runs."""

    def __init__(self, applies_to: MethodFilter = every_method) -> None:
        self.applies_to = applies_to

    @abc.abstractmethod
    async def admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Returns to let the call through; raises a ServiceError to refuse it."""


class InterceptorChain(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """The whole chain as one gRPC interceptor: wrappers outermost, then guards in order.

    One interceptor instead of one per step keeps the per-call cost to a single
    handler wrap; the wrapped handler of each method is built once and reused.
    """

    def __init__(self, wrappers: Sequence[CallWrapper], guards: Sequence[CallGuard]) -> None:
        self._wrappers = tuple(wrappers)
        self._guards = tuple(guards)
        self._wrapped: dict[
            str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]
        ] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        # `continuation` yields None for a method no service implements (the
        # stubs say otherwise); gRPC then answers UNIMPLEMENTED.
        handler: grpc.RpcMethodHandler[Any, Any] | None = await continuation(handler_call_details)
        if handler is None:
            return handler  # type: ignore[return-value]
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = wrap_handler(handler, self._around(method))
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _around(self, method: str) -> Around:
        wrappers = self._wrappers
        guards = tuple(guard for guard in self._guards if guard.applies_to(method))
        return lambda context: _CallScope(wrappers, guards, method, context)


class _CallScope:
    """One call's run through the chain: wrappers entered, guards passed, wrappers exited.

    Hand-written rather than contextlib-built: it runs for every call.
    """

    __slots__ = ("_context", "_guards", "_method", "_states", "_wrappers")

    def __init__(
        self,
        wrappers: tuple[CallWrapper, ...],
        guards: tuple[CallGuard, ...],
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        self._wrappers = wrappers
        self._guards = guards
        self._method = method
        self._context = context
        self._states: list[Any] = []

    async def __aenter__(self) -> None:
        self._states = [wrapper.enter(self._method, self._context) for wrapper in self._wrappers]
        try:
            for guard in self._guards:
                await guard.admit(self._method, self._context)
        except BaseException as error:
            await self._unwind(error)
            raise

    async def __aexit__(self, kind: object, error: BaseException | None, trace: object) -> bool:
        await self._unwind(error)
        return False

    async def _unwind(self, error: BaseException | None) -> None:
        current = error
        for wrapper, state in zip(reversed(self._wrappers), reversed(self._states), strict=True):
            try:
                await wrapper.exit(state, self._method, self._context, current)
            except BaseException as replacement:
                current = replacement
        if current is not error and current is not None:
            raise current


__all__ = [
    "Around",
    "CallGuard",
    "CallWrapper",
    "InterceptorChain",
    "MethodFilter",
    "every_method",
    "wrap_handler",
]
