"""Request bodies parsed after the guards, and refused with a reason when they do not parse.

grpcio parses a request before any interceptor runs and reports a failure
itself (UNKNOWN, the parser's own text, an ERROR traceback), ahead of the rate
limits, authentication and the audit line. So the chain takes raw bytes and
parses them here, once its guards have admitted the call. A body that does
not parse is INVALID_ARGUMENT with a fixed message: each string field whose
bytes are not UTF-8 is named (proto3 refuses the whole message for one such
field), else the body as a whole. Neither the bytes nor the parser's text
ever reach the caller or the log.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from typing import Any, cast

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from google.protobuf.message import Message

from pixelgate.server.core.errors import FieldViolation, RequestInvalid

log = logging.getLogger("pixelgate.request_parsing")

BODY_FIELD = "request body"
"""The BadRequest field violation's `field` when the body as a whole does not parse."""

RequestParser = Callable[[bytes], Any]
"""Turns one raw request message into what the handler expects; raises RequestInvalid."""

RequestReader = Callable[[Any], Any]
"""Turns a call's raw request (bytes, or a stream of them) into the handler's argument."""


def request_reader(
    deserializer: Callable[[bytes], Any] | None, *, streaming: bool
) -> RequestReader:
    """The reader for a method handler's request: parsed at once, or message by message."""
    if deserializer is None:
        return _unchanged
    parse = request_parser(deserializer)
    if not streaming:
        return parse
    return lambda requests: ParsedRequests(requests, parse)


def request_parser(deserializer: Callable[[bytes], Any] | None) -> RequestParser:
    """Parses raw bodies with `deserializer` (grpcio's, from the method handler).

    On the happy path this is the deserializer's call and one frame more; a
    failure is diagnosed from the bytes only then.
    """
    if deserializer is None:
        return _unchanged
    diagnose = BodyDiagnosis(_message_class(deserializer))

    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:
            # Whatever the deserializer raised, its input was only the caller's
            # bytes; `from None` keeps its text out of every later traceback.
            raise diagnose(raw) from None

    return parse


class ParsedRequests:
    """A request stream whose messages are parsed one at a time, as the handler reads them."""

    __slots__ = ("_parse", "_raw")

    def __init__(self, raw: AsyncIterable[bytes], parse: RequestParser) -> None:
        self._raw = aiter(raw)
        self._parse = parse

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        return self._parse(await anext(self._raw))


class BodyDiagnosis:
    """Says why bytes did not parse as `message_class`: the fields, else the whole body."""

    def __init__(self, message_class: type[Message] | None) -> None:
        self._descriptor: Descriptor | None = (
            cast(Descriptor, message_class.DESCRIPTOR) if message_class is not None else None
        )
        name = self._descriptor.full_name if self._descriptor is not None else "request message"
        self._malformed = FieldViolation(BODY_FIELD, f"request body is not a valid {name}")

    def __call__(self, raw: bytes) -> RequestInvalid:
        """The refusal for `raw`, which the real message type failed to parse."""
        violations = self._bad_strings(raw) if self._descriptor is not None else []
        return RequestInvalid(violations or [self._malformed])

    def _bad_strings(self, raw: bytes) -> list[FieldViolation]:
        assert self._descriptor is not None
        twin = lenient_twin(self._descriptor)
        if twin is None:
            return []
        try:
            parsed = twin.FromString(raw)
        except Exception:
            return []  # broken beyond its strings
        return [
            FieldViolation(path, f"{path} must be valid UTF-8")
            for path in non_utf8_fields(parsed, self._descriptor)
        ]


def non_utf8_fields(message: Message, original: Descriptor, prefix: str = "") -> Iterator[str]:
    """Paths (`prompt`, `items[2].name`) of the fields of a twin-parsed `message` that
    are strings in `original` but hold bytes that are not UTF-8."""
    for field, value in message.ListFields():
        source = original.fields_by_number.get(field.number)
        if source is None or field.is_extension:
            continue
        path = prefix + source.name
        values = list(enumerate(value)) if field.is_repeated else [(None, value)]
        for index, each in values:
            where = path if index is None else f"{path}[{index}]"
            if source.type == FieldDescriptor.TYPE_STRING and not _is_utf8(each):
                yield where
            elif source.message_type is not None:
                yield from non_utf8_fields(each, source.message_type, f"{where}.")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")  # strict: refuses surrogates and overlong forms, as protobuf does
    except UnicodeDecodeError:
        return False
    return True


_twins: dict[Descriptor, type[Message] | None] = {}


def lenient_twin(descriptor: Descriptor) -> type[Message] | None:
    """A message class with the wire format of `descriptor`'s, every string field made bytes.

    Built once per type, on the first body that fails to parse, in a pool of its
    own (the real types are untouched); None if the type cannot be twinned.
    """
    if descriptor not in _twins:
        try:
            pool = descriptor_pool.DescriptorPool()
            _add_loosened(pool, descriptor.file, set())
            found = pool.FindMessageTypeByName(descriptor.full_name)
            _twins[descriptor] = message_factory.GetMessageClass(found)
        except Exception as error:  # the body is then reported whole
            log.warning(
                "no field-level diagnosis for %s: %s", descriptor.full_name, type(error).__name__
            )
            _twins[descriptor] = None
    return _twins[descriptor]


def _add_loosened(
    pool: descriptor_pool.DescriptorPool, file: FileDescriptor, added: set[str]
) -> None:
    if file.name in added:
        return
    added.add(file.name)
    for dependency in file.dependencies:
        _add_loosened(pool, dependency, added)
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    del proto.service[:]  # only messages are parsed; options stay opaque
    for message in proto.message_type:
        _loosen_message(message)
    for extension in proto.extension:
        _loosen_field(extension)
    pool.Add(proto)


def _loosen_message(message: descriptor_pb2.DescriptorProto) -> None:
    # A map may not have bytes keys; its entries as a repeated message are the same wire format.
    if message.HasField("options"):
        message.options.ClearField("map_entry")
    for field in (*message.field, *message.extension):
        _loosen_field(field)
    for nested in message.nested_type:
        _loosen_message(nested)


def _loosen_field(field: descriptor_pb2.FieldDescriptorProto) -> None:
    if field.type == descriptor_pb2.FieldDescriptorProto.TYPE_STRING:
        field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
        if field.options.HasField("features"):  # editions: utf8_validation is string-only
            field.options.features.ClearField("utf8_validation")


def _message_class(deserializer: Callable[[bytes], Any]) -> type[Message] | None:
    # Generated stubs pass `SomeMessage.FromString`, bound to its class.
    owner = getattr(deserializer, "__self__", None)
    if isinstance(owner, type) and issubclass(owner, Message):
        return owner
    return None


def _unchanged(raw: Any) -> Any:
    return raw


__all__ = [
    "BODY_FIELD",
    "BodyDiagnosis",
    "ParsedRequests",
    "RequestParser",
    "RequestReader",
    "lenient_twin",
    "non_utf8_fields",
    "request_parser",
    "request_reader",
]
