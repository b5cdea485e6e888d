"""The interceptor chain and the two kinds of step it runs.

The chain rebuilds each method handler with the same request/response shape
(unary or streaming on either side), so a server stream keeps streaming
through it and a guard can refuse a call before the handler's first message.
A step is a CallWrapper (runs around the whole call and sees how it ends) or
a CallGuard (admits or refuses before the handler); each overrides one method.
The chain opens each call's record (call_record.py) as the call starts.

The chain is not a grpc.aio ServerInterceptor: it wraps each method's handler
once, as the services register (`ChainedServer`), so a call pays for its steps
and nothing else. grpc.aio's interceptor hook would run a coroutine per call
before the handler is even found, and costs about a tenth of a bare call's CPU
(issue 12's measurements) with no step in it.

grpcio hands the chain raw request bytes: they are parsed only once the guards
have admitted the call (`request_parsing.py`), so a body that does not parse
is refused like any call, rate-limited, authenticated and audited first. A
request stream is parsed message by message as the handler iterates it; a
handler that reads with `context.read()` would see raw bytes (none here does).
The call record counts the message bytes each way (gRFC A66's sizes, for the
call metrics): the raw requests as the chain reads them; a unary response as
the chain serializes it, before the wrappers exit (grpcio would serialize it
only after); streamed responses as the handler's own serializer, wrapped,
turns them into bytes, whether the handler yields them or writes them with
`context.write()`.
"""

from __future__ import annotations

import abc
import contextlib
import inspect
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Sequence,
)
from typing import Any, cast

import grpc
import grpc.aio

from pixelgate.server.rpc.call_record import (
    CallRecord,
    Metadata,
    NoCallRecord,
    current_record,
    open_record,
)
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
    """The call's request metadata, as the chain read it when the call opened.

    Kept in the call's record, so the steps and the handler share one tuple
    instead of building it again. With no chain in front of the handler (unit
    tests), the context's.
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
    plain call, not a coroutine: this runs on every call, so entering and exiting
    return an awaitable only when a step has something to wait for.
    """

    __slots__ = ("_unwinding", "_wrappers", "guards", "method")

    def __init__(
        self, method: str, wrappers: tuple[CallWrapper, ...], guards: tuple[CallGuard, ...]
    ) -> None:
        self.method = method
        self._wrappers = wrappers
        self.guards = guards
        self._unwinding = tuple(reversed(list(enumerate(wrappers))))

    def open(self, context: grpc.aio.ServicerContext[Any, Any]) -> tuple[CallRecord, list[Any]]:
        """Opens the call's record and enters the wrappers; returns it and their states."""
        # The call's one record, set here and nowhere else: every step and the
        # handler run in this task after it.
        record = open_record(self.method, tuple(context.invocation_metadata() or ()))
        method = self.method
        return record, [wrapper.enter(method, context) for wrapper in self._wrappers]

    async def admit(self, states: list[Any], context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Passes the guards of an opened call.

        A refusal unwinds the wrappers (so it is audited and mapped) and raises.
        The unary wrapped handler inlines this: a coroutine per call is worth saving there.
        """
        try:
            for guard in self.guards:
                pending = guard.admit(self.method, context)
                if pending is not None:
                    await pending
        except BaseException as error:
            pending = self.exit(states, context, error)
            if pending is not None:
                await pending
            raise

    def exit(
        self,
        states: list[Any],
        context: grpc.aio.ServicerContext[Any, Any],
        error: BaseException | None,
    ) -> Awaitable[None] | None:
        """Exits the wrappers, innermost first; raises the error one of them replaced.

        Returns None when every wrapper finished at once, or an awaitable that
        finishes the rest (and raises the replacement, if any).
        """
        current = error
        for position, (index, wrapper) in enumerate(self._unwinding):
            try:
                pending = wrapper.exit(states[index], self.method, context, current)
            except BaseException as replacement:
                current = replacement
                continue
            if pending is not None:
                return self._finish_exit(states, context, error, current, pending, position)
        if current is not error and current is not None:
            raise current
        return None

    async def _finish_exit(
        self,
        states: list[Any],
        context: grpc.aio.ServicerContext[Any, Any],
        error: BaseException | None,
        current: BaseException | None,
        pending: Awaitable[None],
        position: int,
    ) -> None:
        try:
            await pending
        except BaseException as replacement:
            current = replacement
        for index, wrapper in self._unwinding[position + 1 :]:
            try:
                step = wrapper.exit(states[index], self.method, context, current)
                if step is not None:
                    await step
            except BaseException as replacement:
                current = replacement
        if current is not error and current is not None:
            raise current


def wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any], chain: MethodChain
) -> grpc.RpcMethodHandler[Any, Any]:
    """Returns `handler` with every call run through `chain`, same shape.

    The wrapped handler takes raw bytes (no request deserializer) and parses
    them with the handler's deserializer after the guards. A unary response
    leaves it serialized (with the handler's serializer); a stream's serializer
    is the handler's, counting what it makes.
    """
    serialize = handler.response_serializer
    method = chain.method
    guards = chain.guards
    read = request_reader(handler.request_deserializer, streaming=handler.request_streaming)
    # Counts the request's bytes into the call's record (before the guards: a refused call's too).
    received = _counted if handler.request_streaming else _received_whole

    behaviour = handler.unary_unary or handler.stream_unary
    if behaviour is not None:
        is_coroutine = inspect.iscoroutinefunction(behaviour)

        async def wrapped_unary_response(raw: Any, context: Any) -> Any:
            record, states = chain.open(context)
            raw = received(raw, record)
            try:
                for guard in guards:
                    pending = guard.admit(method, context)
                    if pending is not None:
                        await pending
                response = behaviour(read(raw), context)
                if is_coroutine or inspect.isawaitable(response):
                    response = await response
                if serialize is not None:
                    response = serialize(response)
                    record.sent_bytes = len(response)
            except BaseException as error:
                unwinding = chain.exit(states, context, error)
                if unwinding is not None:
                    await unwinding
                raise
            unwinding = chain.exit(states, context, None)
            if unwinding is not None:
                await unwinding
            return response

        make = (
            grpc.unary_unary_rpc_method_handler
            if handler.unary_unary is not None
            else grpc.stream_unary_rpc_method_handler
        )
        return make(wrapped_unary_response, None, None)

    streaming = handler.unary_stream or handler.stream_stream
    assert streaming is not None, "a handler has one of the four shapes"

    async def wrapped_stream_response(raw: Any, context: Any) -> AsyncIterator[Any]:
        record, states = chain.open(context)
        raw = received(raw, record)
        await chain.admit(states, context)  # a stream is long: a coroutine more is nothing
        try:
            # Closed here, before the wrappers exit, even when gRPC abandons the
            # stream: the handler's own clean-up (refunds, records) comes first.
            async with contextlib.aclosing(_responses(streaming(read(raw), context))) as responses:
                async for response in responses:
                    yield response
        except BaseException as error:
            unwinding = chain.exit(states, context, error)
            if unwinding is not None:
                await unwinding
            raise
        unwinding = chain.exit(states, context, None)
        if unwinding is not None:
            await unwinding

    make_streaming = (
        grpc.unary_stream_rpc_method_handler
        if handler.unary_stream is not None
        else grpc.stream_stream_rpc_method_handler
    )
    return make_streaming(
        wrapped_stream_response, None, None if serialize is None else _counting(serialize)
    )


def _counting(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """`serialize`, adding the size of each message it makes to the current call's record."""

    def serialize_counted(response: Any) -> bytes:
        data = serialize(response)
        try:
            current_record().sent_bytes += len(data)  # grpcio serializes in the call's task
        except NoCallRecord:
            pass
        return data

    return serialize_counted


def _received_whole(message: bytes, record: CallRecord) -> bytes:
    """A unary request's raw message, its size noted in the call's record."""
    record.received_bytes = len(message)
    return message


async def _counted(messages: AsyncIterable[bytes], record: CallRecord) -> AsyncIterator[bytes]:
    """A request stream's raw messages, each one's size added to the call's record."""
    async for message in messages:
        record.received_bytes += len(message)
        yield message


class InterceptorChain:
    """The whole chain: wrappers outermost, then guards in order, around every handler.

    Each method's handler is wrapped once, as it is registered through
    `serving(server)`; calls then go straight to the wrapped handler.
    """

    def __init__(self, wrappers: Sequence[CallWrapper], guards: Sequence[CallGuard]) -> None:
        self._wrappers = tuple(wrappers)
        self._guards = tuple(guards)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> Any:
        """`handler` of the full method name `method`, run through the steps that apply."""
        guards = tuple(guard for guard in self._guards if guard.applies_to(method))
        return wrap_handler(handler, MethodChain(method, self._wrappers, guards))

    def serving(self, server: grpc.aio.Server) -> grpc.aio.Server:
        """What to hand the generated `add_*Servicer_to_server` functions instead of `server`.

        Typed as the server they expect: those functions call only the two
        registration methods ChainedServer has.
        """
        return cast(grpc.aio.Server, ChainedServer(server, self))


class ChainedServer:
    """Stands in for the server when services register: every handler they register
    reaches the server wrapped in the chain, so no service can bypass it."""

    def __init__(self, server: grpc.aio.Server, chain: InterceptorChain) -> None:
        self._server = server
        self._chain = chain

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        """The generated code's registered methods (grpc core finds them without a lookup)."""
        # grpcio has it since 1.62; the grpc-stubs package does not know it yet.
        self._server.add_registered_method_handlers(  # type: ignore[attr-defined]
            service,
            {name: self._chain.wrap(f"/{service}/{name}", h) for name, h in handlers.items()},
        )

    def add_generic_rpc_handlers(
        self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        """Generic handlers (for methods not registered by name, and older generated code)."""
        self._server.add_generic_rpc_handlers(
            tuple(_ChainedGenericHandler(handler, self._chain) for handler in handlers)
        )


class _ChainedGenericHandler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """A generic handler whose answers come wrapped in the chain, each method's once."""

    def __init__(self, inner: grpc.GenericRpcHandler[Any, Any], chain: InterceptorChain) -> None:
        self._inner = inner
        self._chain = chain
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        # None for a method this handler does not serve; gRPC then asks the next one,
        # or answers UNIMPLEMENTED.
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._chain.wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


__all__ = [
    "CallGuard",
    "CallWrapper",
    "ChainedServer",
    "InterceptorChain",
    "Metadata",
    "MethodChain",
    "MethodFilter",
    "Pending",
    "every_method",
    "request_metadata",
    "wrap_handler",
]
