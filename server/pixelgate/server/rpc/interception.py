"""The interceptor chain and the two kinds of step it runs.

The chain rebuilds each method handler with the same request/response shape
(unary or streaming on either side), so a server stream keeps streaming
through it and a guard can refuse a call before the handler's first message.
A step is a CallWrapper (runs around the whole call and sees how it ends) or
a CallGuard (admits or refuses before the handler); each overrides one method.
The chain opens each call's record (call_record.py) as the call starts.

grpcio hands the chain raw request bytes: they are parsed only once the guards
have admitted the call (`request_parsing.py`), so a body that does not parse
is refused like any call, rate-limited, authenticated and audited first. A
request stream is parsed message by message as the handler iterates it; a
handler that reads with `context.read()` would see raw bytes (none here does).
"""

from __future__ import annotations

import abc
import contextlib
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from pixelgate.server.rpc.call_record import Metadata, NoCallRecord, current_record, open_record
from pixelgate.server.rpc.request_parsing import request_reader

MethodFilter = Callable[[str], bool]
"""Says, from the full method name (`/package.Service/Method`), whether a piece applies."""

Pending = Awaitable[None] | None
"""What a step returns: None when it has decided at once, or something to await
(a key fetch, a Redis round trip) before the call goes on."""


def every_method(method: str) -> bool:
    """A MethodFilter that applies to every method."""
    return True


def request_metadata(context: grpc.aio.ServicerContext[Any, Any]) -> Metadata:
    """The call's request metadata, as gRPC read it to find the handler.

    gRPC hands it to the interceptor anyway, which keeps it in the call's
    record: reusing it saves building the tuple again on every call. With no
    chain in front of the handler (unit tests), the context's.
    """
    try:
        metadata = current_record().metadata
    except NoCallRecord:
        metadata = None
    if metadata is None:
        return tuple(context.invocation_metadata() or ())
    return metadata


async def _responses(result: Any) -> AsyncGenerator[Any, None]:
    # A streaming handler may be an async generator, a plain iterator, or a
    # coroutine that writes with `context.write()` and returns None.
    if inspect.isasyncgen(result):
        async with contextlib.aclosing(result):  # its clean-up runs when this one closes
            async for response in result:
                yield response
    elif hasattr(result, "__aiter__"):
        async for response in result:
            yield response
    elif inspect.isawaitable(result):
        await result
    elif result is not None:
        for response in result:
            yield response


class CallWrapper(abc.ABC):
    """A step around the whole call (audit, error mapping): it sees how the call ends."""

    def enter(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """Called as the call starts; what it returns comes back to exit()."""
        return None

    @abc.abstractmethod
    def exit(
        self,
        state: Any,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        error: BaseException | None,
    ) -> Pending:
        """Called as the call ends, with what it raised (None: it succeeded).

        Raising, or returning an awaitable that raises, replaces the error
        (error mapping raises the abort).
        """


class CallGuard(abc.ABC):
    """A step that admits or refuses a call before its handler runs."""

    def __init__(self, applies_to: MethodFilter = every_method) -> None:
        self.applies_to = applies_to

    @abc.abstractmethod
    def admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Pending:
        """Lets the call through (returning None, or an awaitable that returns);
        raises a ServiceError, at once or when awaited, to refuse it."""


class MethodChain:
    """The steps one method's calls run through: wrappers entered, guards passed,
    wrappers exited in reverse.

    Steps that decide at once (a cached token, an in-process bucket) cost a
    plain call, not a coroutine: this runs on every call.
    """

    __slots__ = ("_guards", "_method", "_unwinding", "_wrappers")

    def __init__(
        self, method: str, wrappers: tuple[CallWrapper, ...], guards: tuple[CallGuard, ...]
    ) -> None:
        self._method = method
        self._wrappers = wrappers
        self._guards = guards
        self._unwinding = tuple(reversed(list(enumerate(wrappers))))

    async def enter(self, context: grpc.aio.ServicerContext[Any, Any]) -> list[Any]:
        """Enters the wrappers and passes the guards; returns the wrappers' states.

        A refusal unwinds the wrappers (so it is audited and mapped) and raises.
        """
        method = self._method
        states = [wrapper.enter(method, context) for wrapper in self._wrappers]
        try:
            for guard in self._guards:
                pending = guard.admit(method, context)
                if pending is not None:
                    await pending
        except BaseException as error:
            await self.exit(states, context, error)
            raise
        return states

    async def exit(
        self,
        states: list[Any],
        context: grpc.aio.ServicerContext[Any, Any],
        error: BaseException | None,
    ) -> None:
        """Exits the wrappers, innermost first; raises the error one of them replaced."""
        current = error
        for index, wrapper in self._unwinding:
            try:
                pending = wrapper.exit(states[index], self._method, context, current)
                if pending is not None:
                    await pending
            except BaseException as replacement:
                current = replacement
        if current is not error and current is not None:
            raise current


def wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any], chain: MethodChain
) -> grpc.RpcMethodHandler[Any, Any]:
    """Returns `handler` with every call run through `chain`, same shape.

    The wrapped handler takes raw bytes (no request deserializer) and parses
    them with the handler's deserializer after the guards.
    """
    response_serializer = handler.response_serializer
    read = request_reader(handler.request_deserializer, streaming=handler.request_streaming)

    behaviour = handler.unary_unary or handler.stream_unary
    if behaviour is not None:
        is_coroutine = inspect.iscoroutinefunction(behaviour)

        async def wrapped_unary_response(raw: Any, context: Any) -> Any:
            states = await chain.enter(context)
            try:
                response = behaviour(read(raw), context)
                if is_coroutine or inspect.isawaitable(response):
                    response = await response
            except BaseException as error:
                await chain.exit(states, context, error)
                raise
            await chain.exit(states, context, None)
            return response

        make = (
            grpc.unary_unary_rpc_method_handler
            if handler.unary_unary is not None
            else grpc.stream_unary_rpc_method_handler
        )
        return make(wrapped_unary_response, None, response_serializer)

    streaming = handler.unary_stream or handler.stream_stream
    assert streaming is not None, "a handler has one of the four shapes"

    async def wrapped_stream_response(raw: Any, context: Any) -> AsyncIterator[Any]:
        states = await chain.enter(context)
        try:
            # Closed here, before the wrappers exit, even when gRPC abandons the
            # stream: the handler's own clean-up (refunds, records) comes first.
            async with contextlib.aclosing(_responses(streaming(read(raw), context))) as responses:
                async for response in responses:
                    yield response
        except BaseException as error:
            await chain.exit(states, context, error)
            raise
        await chain.exit(states, context, None)

    make_streaming = (
        grpc.unary_stream_rpc_method_handler
        if handler.unary_stream is not None
        else grpc.stream_stream_rpc_method_handler
    )
    return make_streaming(wrapped_stream_response, None, response_serializer)


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
        # The call's one record, set here and nowhere else: every step and the
        # handler run in this task after it.
        open_record(method, handler_call_details.invocation_metadata)
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        guards = tuple(guard for guard in self._guards if guard.applies_to(method))
        wrapped = wrap_handler(handler, MethodChain(method, self._wrappers, guards))
        self._wrapped[method] = (handler, wrapped)
        return wrapped


__all__ = [
    "CallGuard",
    "CallWrapper",
    "InterceptorChain",
    "Metadata",
    "MethodChain",
    "MethodFilter",
    "Pending",
    "every_method",
    "request_metadata",
    "wrap_handler",
]
