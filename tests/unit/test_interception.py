"""The interceptor chain: guards admit or refuse, wrappers see how each call ends, any shape."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import grpc
import pytest

from pixelgate.server.interception import (
    CallGuard,
    CallWrapper,
    InterceptorChain,
    MethodChain,
    Pending,
    request_metadata,
    wrap_handler,
)

METHOD = "/pixelgate.v1.ImageService/GenerateImage"
OTHER = "/pixelgate.v1.ImageService/ListModels"
CONTEXT_METADATA = (("from", "context"),)


class Refused(Exception):
    """What a refusing guard or failing handler raises."""


class Mapped(Exception):
    """What an error-mapping wrapper turns any failure into."""


class FakeContext:
    """Only what request_metadata touches."""

    def __init__(self, metadata: Any = CONTEXT_METADATA) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> Any:
        return self.metadata


class Details(NamedTuple):
    """A grpc.HandlerCallDetails."""

    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


class Recorder(CallWrapper):
    """Logs enter and exit (with the error it saw); exit returns None."""

    def __init__(self, name: str, log: list[Any]) -> None:
        self.name, self.log, self.errors = name, log, []

    def enter(self, method: str, context: Any) -> Any:
        self.log.append(f"enter {self.name}")
        return f"state {self.name}"

    def exit(self, state: Any, method: str, context: Any, error: BaseException | None) -> Pending:
        assert state == f"state {self.name}"
        self.log.append(f"exit {self.name}")
        self.errors.append(error)
        return None


class Mapper(CallWrapper):
    """Like ErrorMapping: replaces any Exception, at once or when awaited."""

    def __init__(self, deferred: bool) -> None:
        self.deferred = deferred

    def exit(self, state: Any, method: str, context: Any, error: BaseException | None) -> Pending:
        if not isinstance(error, Exception):
            return None
        if not self.deferred:
            raise Mapped(str(error)) from error

        async def abort() -> None:
            raise Mapped(str(error)) from error

        return abort()


class Guard(CallGuard):
    """Admits or refuses, deciding at once ("now") or when awaited ("later")."""

    def __init__(self, name: str, log: list[Any], mode: str = "now", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name, self.log, self.mode = name, log, mode

    def admit(self, method: str, context: Any) -> Pending:
        self.log.append(f"admit {self.name}")
        if self.mode == "refuse now":
            raise Refused(self.name)
        if self.mode == "now":
            return None

        async def decide() -> None:
            await asyncio.sleep(0)
            self.log.append(f"decided {self.name}")
            if self.mode == "refuse later":
                raise Refused(self.name)

        return decide()


def _unary(log: list[Any], response: Any = "response") -> grpc.RpcMethodHandler[Any, Any]:
    async def behaviour(request: Any, context: Any) -> Any:
        log.append("handler")
        return response

    return grpc.unary_unary_rpc_method_handler(behaviour)


def _wrap(handler: Any, wrappers: list[CallWrapper], guards: list[CallGuard]) -> Any:
    return wrap_handler(handler, MethodChain(METHOD, tuple(wrappers), tuple(guards)))


def _steps(text: str) -> list[str]:
    return text.split(", ")


async def _drain(stream: AsyncIterator[Any]) -> list[Any]:
    return [message async for message in stream]


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("mode", ["refuse now", "refuse later"])
def test_a_refusal_skips_the_handler_and_every_wrapper_sees_it(mode: str, streaming: bool) -> None:
    """A refusal, at once or awaited, reaches each exit innermost first, then the caller."""
    log: list[Any] = []
    outer, inner = Recorder("outer", log), Recorder("inner", log)

    async def stream(request: Any, context: Any) -> AsyncIterator[str]:
        log.append("handler")
        yield "one"

    handler = grpc.unary_stream_rpc_method_handler(stream) if streaming else _unary(log)
    wrapped = _wrap(handler, [outer, inner], [Guard("first", log), Guard("no", log, mode)])
    with pytest.raises(Refused) as raised:
        if streaming:  # refused on the first read, before any message
            asyncio.run(_drain(wrapped.unary_stream("request", FakeContext())))
        else:
            asyncio.run(wrapped.unary_unary("request", FakeContext()))
    assert "handler" not in log
    assert log[-2:] == ["exit inner", "exit outer"]
    assert inner.errors == [raised.value] and outer.errors == [raised.value]


@pytest.mark.parametrize("asynchronous", [True, False])
def test_admitted_calls_pass_every_guard_in_order_then_run_the_handler(asynchronous: bool) -> None:
    """Guards deciding at once and awaited ones mix; the response comes back unchanged."""
    log: list[Any] = []
    response = object()
    wrapper = Recorder("audit", log)
    guards = [Guard("a", log), Guard("b", log, "later"), Guard("c", log), Guard("d", log, "later")]

    def plain(request: Any, context: Any) -> Any:
        log.append("handler")
        return response

    handler = _unary(log, response) if asynchronous else grpc.unary_unary_rpc_method_handler(plain)
    wrapped = _wrap(handler, [wrapper], guards)
    assert asyncio.run(wrapped.unary_unary("request", FakeContext())) is response
    assert log == _steps(
        "enter audit, admit a, admit b, decided b, admit c, admit d, decided d, handler, exit audit"
    )
    assert wrapper.errors == [None]


@pytest.mark.parametrize("deferred", [True, False])
@pytest.mark.parametrize("failure", ["handler", "guard"])
def test_a_wrapper_that_replaces_the_error_is_what_outer_wrappers_and_the_caller_see(
    deferred: bool, failure: str
) -> None:
    """An error mapped by an inner wrapper reaches the outer one and the caller as mapped."""
    log: list[Any] = []
    outer = Recorder("outer", log)

    async def failing(request: Any, context: Any) -> Any:
        raise Refused("handler")

    handler = grpc.unary_unary_rpc_method_handler(failing)
    guards = [Guard("guard", log, "refuse later")] if failure == "guard" else []
    wrapped = _wrap(handler, [outer, Mapper(deferred)], guards)
    with pytest.raises(Mapped, match=failure) as raised:
        asyncio.run(wrapped.unary_unary("request", FakeContext()))
    assert isinstance(raised.value.__cause__, Refused)
    assert outer.errors == [raised.value]


SHAPES: list[tuple[str, Callable[..., Any]]] = [
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
]


@pytest.mark.parametrize(("shape", "make"), SHAPES)
def test_wrapping_keeps_the_handler_shape_and_serializers(shape: str, make: Callable) -> None:
    """Each of the four shapes comes back as itself, with the same (de)serializers."""
    handler = make(lambda request, context: None, bytes.decode, str.encode)
    wrapped = _wrap(handler, [], [])
    assert wrapped.request_streaming == handler.request_streaming
    assert wrapped.response_streaming == handler.response_streaming
    assert wrapped.request_deserializer is bytes.decode
    assert wrapped.response_serializer is str.encode
    for other, _ in SHAPES:
        assert (getattr(wrapped, other) is not None) == (other == shape)


@pytest.mark.parametrize(
    "make", [grpc.unary_stream_rpc_method_handler, grpc.stream_stream_rpc_method_handler]
)
def test_a_stream_yields_every_message_through_the_chain(make: Callable) -> None:
    """Every message of an async-generator handler arrives, between the guards and the exit."""
    log: list[Any] = []
    wrapper = Recorder("audit", log)

    async def stream(request: Any, context: Any) -> AsyncIterator[str]:
        for message in ("one", "two", "three"):
            log.append(f"yield {message}")
            yield message

    wrapped = _wrap(make(stream), [wrapper], [Guard("later", log, "later")])
    behaviour = wrapped.unary_stream or wrapped.stream_stream
    assert asyncio.run(_drain(behaviour("request", FakeContext()))) == ["one", "two", "three"]
    assert log == _steps(
        "enter audit, admit later, decided later, yield one, yield two, yield three, exit audit"
    )
    assert wrapper.errors == [None]


def test_a_consumer_that_stops_early_closes_the_handler_before_the_wrappers_exit() -> None:
    """aclose() after one message runs the handler's finally, then each exit once, then returns."""
    log: list[Any] = []
    outer, inner = Recorder("outer", log), Recorder("inner", log)

    async def stream(request: Any, context: Any) -> AsyncIterator[str]:
        try:
            yield "one"
            yield "two"
        finally:
            log.append("handler finally")

    async def consume() -> None:
        wrapped = _wrap(grpc.unary_stream_rpc_method_handler(stream), [outer, inner], [])
        responses = wrapped.unary_stream("request", FakeContext())
        assert await anext(responses) == "one"
        await responses.aclose()
        log.append("aclose returned")

    asyncio.run(consume())
    assert log == _steps(
        "enter outer, enter inner, handler finally, exit inner, exit outer, aclose returned"
    )
    assert len(inner.errors) == 1 and isinstance(inner.errors[0], GeneratorExit)
    assert len(outer.errors) == 1 and isinstance(outer.errors[0], GeneratorExit)


def _continuation(handlers: dict[str, Any]) -> Callable[[Any], Awaitable[Any]]:
    async def continuation(details: Any) -> Any:
        return handlers.get(details.method)

    return continuation


def test_the_chain_wraps_each_method_once_and_runs_only_the_guards_that_apply() -> None:
    """One wrapped handler per method, reused; unknown methods stay None; filtered guards skip."""
    log: list[Any] = []
    guard = Guard("generate only", log, applies_to=lambda method: method == METHOD)
    chain = InterceptorChain([], [guard])
    proceed = _continuation({METHOD: _unary(log), OTHER: _unary(log)})

    async def intercept(method: str) -> Any:
        return await chain.intercept_service(proceed, Details(method, ()))

    first, again, other = (asyncio.run(intercept(m)) for m in (METHOD, METHOD, OTHER))
    assert first is again and other is not first
    assert asyncio.run(intercept("/pixelgate.v1.ImageService/Nothing")) is None
    asyncio.run(other.unary_unary("request", FakeContext()))
    assert log == ["handler"]
    asyncio.run(first.unary_unary("request", FakeContext()))
    assert log == ["handler", "admit generate only", "handler"]


def _metadata_chain() -> tuple[InterceptorChain, Callable[[Any], Awaitable[Any]]]:
    async def echo(request: Any, context: Any) -> Any:
        return request_metadata(context)

    handler = grpc.unary_unary_rpc_method_handler(echo)
    return InterceptorChain([], []), _continuation({METHOD: handler})


def test_request_metadata_is_what_the_interceptor_saw_in_the_same_task() -> None:
    """A handler reached through the chain reads the call details' metadata, not the context's."""
    chain, proceed = _metadata_chain()
    metadata = (("authorization", "Bearer abc"),)

    async def call() -> Any:
        wrapped = await chain.intercept_service(proceed, Details(METHOD, metadata))
        return await wrapped.unary_unary("request", FakeContext())

    assert asyncio.run(call()) == metadata


@pytest.mark.parametrize(("held", "expected"), [(CONTEXT_METADATA, CONTEXT_METADATA), (None, ())])
def test_request_metadata_falls_back_to_the_context(held: Any, expected: Any) -> None:
    """With no interceptor in the task, the context's metadata (or none) is used."""

    async def read() -> Any:
        return request_metadata(FakeContext(held))

    assert asyncio.run(read()) == expected


def test_concurrent_calls_each_see_their_own_metadata() -> None:
    """Two calls interleaving on one loop never read each other's metadata."""
    chain, proceed = _metadata_chain()

    async def call(caller: str) -> Any:
        wrapped = await chain.intercept_service(proceed, Details(METHOD, (("caller", caller),)))
        await asyncio.sleep(0)
        return await wrapped.unary_unary("request", FakeContext())

    async def both() -> list[Any]:
        return await asyncio.gather(
            asyncio.create_task(call("alice")), asyncio.create_task(call("bob"))
        )

    assert asyncio.run(both()) == [(("caller", "alice"),), (("caller", "bob"),)]
