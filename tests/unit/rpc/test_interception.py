"""The interceptor chain: guards admit or refuse, wrappers see how each call ends, any shape;
request bodies are parsed only after the guards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError

from pixelgate.server.core.errors import FieldViolation, RequestInvalid, StatusCode
from pixelgate.server.rpc.call_record import current_record
from pixelgate.server.rpc.interception import (
    CallGuard,
    CallWrapper,
    InterceptorChain,
    MethodChain,
    Pending,
    request_metadata,
    wrap_handler,
)
from pixelgate.server.rpc.request_parsing import request_parser
from pixelgate.v1 import image_service_pb2 as pb

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
def test_wrapping_keeps_the_handler_shape_and_takes_raw_bytes(shape: str, make: Callable) -> None:
    """Each shape comes back as itself; grpcio hands it raw bytes and gets bytes back."""
    handler = make(lambda request, context: None, bytes.decode, str.encode)
    wrapped = _wrap(handler, [], [])
    assert wrapped.request_streaming == handler.request_streaming
    assert wrapped.response_streaming == handler.response_streaming
    assert wrapped.request_deserializer is None  # parsed by the chain, after the guards
    if handler.response_streaming:  # the handler's serializer, counting
        assert wrapped.response_serializer("é") == "é".encode()
    else:  # the chain serializes a unary response before its wrappers exit
        assert wrapped.response_serializer is None
    for other, _ in SHAPES:
        assert (getattr(wrapped, other) is not None) == (other == shape)


class Parser:
    """A request deserializer that logs each body it parses and refuses b"bad"."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def __call__(self, raw: bytes) -> str:
        self.log.append(f"parse {raw.decode()}")
        if raw == b"bad":
            raise ValueError("parser text that must not reach the caller")
        return raw.decode().upper()


async def _requests(bodies: tuple[bytes, ...], deserialize: Callable) -> AsyncIterator[Any]:
    for body in bodies:
        yield deserialize(body)


def _call_shape(shape: str, wrapped: Any, *bodies: bytes) -> Any:
    """Calls a wrapped handler of `shape` as grpcio would: bodies through its request
    deserializer, if it has one, before the call (unary) or as each is read (stream)."""
    behaviour = getattr(wrapped, shape)
    deserialize = wrapped.request_deserializer or (lambda body: body)
    if shape.startswith("stream"):
        result = behaviour(_requests(bodies, deserialize), FakeContext())
    else:
        result = behaviour(deserialize(bodies[0]), FakeContext())
    if shape.endswith("stream"):
        return asyncio.run(_drain(result))
    return asyncio.run(result)


def _echo_handler(make: Callable, shape: str, log: list[Any]) -> Any:
    """A handler of `shape` that logs and answers each request it gets."""

    async def unary_request(request: Any) -> list[Any]:
        log.append(f"handler {request}")
        return [request]

    async def stream_request(requests: Any) -> list[Any]:
        answers = []
        async for request in requests:
            log.append(f"handler {request}")
            answers.append(request)
        return answers

    read = stream_request if shape.startswith("stream") else unary_request
    if shape.endswith("stream"):

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            for answer in await read(request):
                yield answer

        return make(streaming, Parser(log))

    async def unary(request: Any, context: Any) -> Any:
        return await read(request)

    return make(unary, Parser(log))


@pytest.mark.parametrize(("shape", "make"), SHAPES)
def test_the_request_is_parsed_only_once_every_guard_has_admitted_the_call(
    shape: str, make: Callable
) -> None:
    """Guards decide on a call whose body is still bytes; the handler gets it parsed."""
    log: list[Any] = []
    guards = [Guard("now", log), Guard("later", log, "later")]
    wrapped = _wrap(_echo_handler(make, shape, log), [], guards)
    result = _call_shape(shape, wrapped, b"one", b"two")
    if shape.startswith("stream"):  # each message parsed as the handler reads it
        assert result == ["ONE", "TWO"]
        expected = "parse one, handler ONE, parse two, handler TWO"
    else:
        assert result == ["ONE"]
        expected = "parse one, handler ONE"
    assert log == _steps(f"admit now, admit later, decided later, {expected}")


@pytest.mark.parametrize(("shape", "make"), SHAPES)
def test_a_refused_call_never_parses_its_body(shape: str, make: Callable) -> None:
    """A guard's refusal comes first: bytes from a refused caller reach no parser."""
    log: list[Any] = []
    wrapped = _wrap(_echo_handler(make, shape, log), [], [Guard("no", log, "refuse later")])
    with pytest.raises(Refused):
        _call_shape(shape, wrapped, b"bad")
    assert log == ["admit no", "decided no"]


@pytest.mark.parametrize(("shape", "make"), SHAPES)
def test_a_body_that_does_not_parse_reaches_the_wrappers_as_invalid_argument(
    shape: str, make: Callable
) -> None:
    """The parser's failure becomes INVALID_ARGUMENT naming the body, with none of its text."""
    log: list[Any] = []
    audit = Recorder("audit", log)
    wrapped = _wrap(_echo_handler(make, shape, log), [audit], [])
    bodies = (b"fine", b"bad") if shape.startswith("stream") else (b"bad",)
    with pytest.raises(RequestInvalid) as raised:
        _call_shape(shape, wrapped, *bodies)
    refusal = raised.value
    assert refusal.code is StatusCode.INVALID_ARGUMENT
    assert refusal.violations == (
        FieldViolation("request body", "request body is not a valid request message"),
    )
    assert refusal.message == "request body is not a valid request message"
    assert refusal.__cause__ is None and refusal.__suppress_context__  # no parser traceback
    assert audit.errors == [refusal]
    assert log[-2:] == ["parse bad", "exit audit"]


def _field(number: int, value: bytes) -> bytes:
    return bytes([number << 3 | 2, len(value)]) + value


@pytest.mark.parametrize(
    "bad",
    [b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xff"],
    ids=["lone-surrogate", "overlong", "beyond-U+10FFFF", "not-a-lead-byte"],
)
def test_invalid_utf8_is_named_by_its_field(bad: bytes) -> None:
    """protobuf refuses the whole message; the refusal names the string field holding the bytes."""
    body = _field(1, b"a fox") + _field(2, b"blurry " + bad)
    with pytest.raises(DecodeError):
        pb.GenerateImageRequest.FromString(body)
    with pytest.raises(RequestInvalid) as raised:
        request_parser(pb.GenerateImageRequest.FromString)(body)
    assert raised.value.violations == (
        FieldViolation("negative_prompt", "negative_prompt must be valid UTF-8"),
    )


def test_invalid_utf8_in_nested_messages_and_maps_is_named_by_its_path() -> None:
    """Strings inside nested messages, repeated fields and map keys get a path to them."""
    body = struct_pb2.Struct(fields={"good": struct_pb2.Value(string_value="ok")})
    raw = body.SerializeToString()
    broken = raw.replace(b"good", b"go\xc0\xaf").replace(b"ok", b"\xed\xa0")
    with pytest.raises(RequestInvalid) as raised:
        request_parser(struct_pb2.Struct.FromString)(broken)
    assert [v.field for v in raised.value.violations] == [
        "fields[0].key",
        "fields[0].value.string_value",
    ]


def test_the_lenient_twin_leaves_the_real_types_strict() -> None:
    """Diagnosing a body builds a private twin; the real message type still refuses bad UTF-8."""
    body = _field(1, b"\xed\xa0\x80")
    with pytest.raises(RequestInvalid):
        request_parser(pb.GenerateImageRequest.FromString)(body)
    with pytest.raises(DecodeError):
        pb.GenerateImageRequest.FromString(body)
    assert pb.GenerateImageRequest.FromString(_field(1, b"ok")).prompt == "ok"


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


class Registrations:
    """A server as the generated add_*_to_server functions see it: what was registered."""

    def __init__(self) -> None:
        self.registered: dict[str, Any] = {}
        self.generic: list[Any] = []

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.registered.update({f"/{service}/{name}": h for name, h in handlers.items()})

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)


def test_every_registered_handler_is_wrapped_once_with_only_the_guards_that_apply() -> None:
    """Registered by name or through a generic handler, each method runs through the chain;
    a generic handler's answer is wrapped once and reused; unknown methods stay None."""
    log: list[Any] = []
    guard = Guard("generate only", log, applies_to=lambda method: method == METHOD)
    chain = InterceptorChain([], [guard])
    server = Registrations()
    services = chain.serving(server)  # type: ignore[arg-type]
    services.add_registered_method_handlers(  # type: ignore[attr-defined]
        "pixelgate.v1.ImageService", {"GenerateImage": _unary(log), "ListModels": _unary(log)}
    )
    services.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "pixelgate.v1.ImageService", {"GenerateImage": _unary(log)}
            ),
        )
    )
    asyncio.run(server.registered[OTHER].unary_unary(b"", FakeContext()))
    assert log == ["handler"]
    asyncio.run(server.registered[METHOD].unary_unary(b"", FakeContext()))
    assert log == ["handler", "admit generate only", "handler"]

    [generic] = server.generic
    first, again = (generic.service(Details(METHOD, ())) for _ in range(2))
    assert first is again
    assert generic.service(Details("/pixelgate.v1.ImageService/Nothing", ())) is None
    asyncio.run(first.unary_unary(b"", FakeContext()))
    assert log[-2:] == ["admit generate only", "handler"]


def _metadata_handler() -> Any:
    async def echo(request: Any, context: Any) -> Any:
        return request_metadata(context)

    return InterceptorChain([], []).wrap(METHOD, grpc.unary_unary_rpc_method_handler(echo))


def test_request_metadata_is_what_the_chain_read_as_the_call_opened() -> None:
    """A handler reached through the chain reads the tuple the chain kept in the record."""
    metadata = (("authorization", "Bearer abc"),)
    context = FakeContext(metadata)
    seen = asyncio.run(_metadata_handler().unary_unary(b"", context))
    assert seen == metadata
    context.metadata = (("changed", "later"),)  # not read again within the call


@pytest.mark.parametrize(("held", "expected"), [(CONTEXT_METADATA, CONTEXT_METADATA), (None, ())])
def test_request_metadata_falls_back_to_the_context(held: Any, expected: Any) -> None:
    """With no interceptor in the task, the context's metadata (or none) is used."""

    async def read() -> Any:
        return request_metadata(FakeContext(held))

    assert asyncio.run(read()) == expected


def test_concurrent_calls_each_see_their_own_metadata() -> None:
    """Two calls interleaving on one loop never read each other's metadata."""
    wrapped = _metadata_handler()

    async def call(caller: str) -> Any:
        await asyncio.sleep(0)
        return await wrapped.unary_unary(b"", FakeContext((("caller", caller),)))

    async def both() -> list[Any]:
        return await asyncio.gather(
            asyncio.create_task(call("alice")), asyncio.create_task(call("bob"))
        )

    assert asyncio.run(both()) == [(("caller", "alice"),), (("caller", "bob"),)]


class SizeNoter(CallWrapper):
    """Notes the bytes each way the call's record holds as the call ends."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def exit(self, state: Any, method: str, context: Any, error: BaseException | None) -> None:
        record = current_record()
        self.seen.append((record.received_bytes, record.sent_bytes))


async def _unary_unary(request: str, context: Any) -> str:
    return request + "!"


async def _unary_stream(request: str, context: Any) -> AsyncIterator[str]:
    yield request + "!"


async def _stream_unary(requests: Any, context: Any) -> str:
    return "".join([request async for request in requests]) + "!"


async def _stream_stream(requests: Any, context: Any) -> AsyncIterator[str]:
    async for request in requests:
        yield request + "!"


async def _raw(bodies: tuple[bytes, ...]) -> AsyncIterator[bytes]:
    for body in bodies:
        yield body


async def _serve(wrapped: Any, shape: str, bodies: tuple[bytes, ...]) -> Any:
    """One call as grpcio makes it: raw bytes in; each streamed message serialized as sent."""
    request: Any = _raw(bodies) if shape.startswith("stream") else bodies[0]
    result = getattr(wrapped, shape)(request, FakeContext())
    if shape.endswith("stream"):
        return [wrapped.response_serializer(message) async for message in result]
    return await result


@pytest.mark.parametrize(("shape", "make"), SHAPES)
def test_the_record_counts_the_message_bytes_each_way_before_the_wrappers_exit(
    shape: str, make: Callable
) -> None:
    """Request bytes as read, response bytes as serialized, for every shape; a refused
    call's request bytes too (gRFC A66's per-call sizes)."""
    behaviour = globals()[f"_{shape}"]
    bodies = (b"ab", b"cde") if shape.startswith("stream") else (b"abcde",)
    noter = SizeNoter()
    wrapped = _wrap(make(behaviour, bytes.decode, str.encode), [noter], [])
    asyncio.run(_serve(wrapped, shape, bodies))
    assert noter.seen == [(5, 7 if shape == "stream_stream" else 6)]

    guard = Guard("no", [], "refuse now")
    refusing = _wrap(make(behaviour, bytes.decode, str.encode), [noter], [guard])
    with pytest.raises(Refused):
        asyncio.run(_serve(refusing, shape, bodies))
    # A unary request arrived whole before the guards; a stream's messages were never read.
    assert noter.seen[-1] == (5 if shape.startswith("unary") else 0, 0)
