"""Request bytes that do not parse: refused like any call, after the guards, never as a crash."""

from __future__ import annotations

import logging
import random

import grpc
import pytest
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from pixelgate.client import InvalidArgument
from pixelgate.client.errors import error_from_rpc
from pixelgate.v1 import image_service_pb2 as pb

TIMEOUT = 10.0
GENERATE = "/pixelgate.v1.ImageService/GenerateImage"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

pytestmark = pytest.mark.timeout(60)

MALFORMED_BODIES = {
    # 64 bytes from a fixed seed (the test checks that they do not parse).
    "random-bytes": random.Random(8).randbytes(64),
    # Field 5 (width, a varint) whose varint never ends.
    "truncated-varint": b"\x28\xff\xff",
    # Field 1 (prompt) claiming 100 bytes where 3 follow.
    "short-length": b"\x0a\x64abc",
}


def _string_field(number: int, value: bytes) -> bytes:
    """The wire bytes of a length-delimited field, whatever `value` holds."""
    assert len(value) < 128
    return bytes([number << 3 | 2, len(value)]) + value


PROMPT, NEGATIVE_PROMPT, MODEL = 1, 2, 3
LONE_SURROGATE = b"a \xed\xa0\x80 fox"  # U+D800 encoded as if it were a character
OVERLONG_SLASH = b"a \xc0\xaf fox"  # "/" in two bytes: never valid UTF-8
NOT_UTF8 = b"\xff\xfe"


def _call(channel: grpc.Channel, body: bytes, method: str = GENERATE) -> grpc.RpcError:
    """Sends `body` as it is (no serializer) and returns the error the call ends with."""
    responses = channel.unary_stream(method, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as caught:
        list(responses(body, timeout=TIMEOUT))
    return caught.value


def _violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The google.rpc.BadRequest field violations the status carries, as the client reads them."""
    typed = error_from_rpc(error)
    assert isinstance(typed, InvalidArgument), error
    return list(typed.violations)


def _assert_quiet(caplog: pytest.LogCaptureFixture) -> None:
    """No traceback, no ERROR line and no protobuf parser text in the server's log."""
    for record in caplog.records:
        assert record.levelno < logging.ERROR, record.getMessage()
        assert record.exc_info is None, record.getMessage()
        assert "DecodeError" not in record.getMessage()
        assert "Error parsing" not in record.getMessage()


def _generate_lines(server, connect) -> list[dict]:
    """The audit lines of GenerateImage calls, once a later ListModels call is audited too."""
    connect(server).list_models(timeout=TIMEOUT)
    entries = server.audit_entries(2)
    wanted = [e for e in entries if e["method"].endswith("/ListModels")]
    assert wanted, "the ListModels call is audited"
    return [e for e in entries if e["method"] == GENERATE]


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_a_body_that_does_not_parse_is_invalid_argument_with_a_fixed_message(
    server, channel, connect, caplog, body
):
    """INVALID_ARGUMENT naming the request body, with no parser text; audited once; no traceback."""
    with pytest.raises(DecodeError):  # the body really is no GenerateImageRequest
        pb.GenerateImageRequest.FromString(body)
    caplog.set_level(logging.DEBUG)
    error = _call(channel(server), body)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "request body is not a valid pixelgate.v1.GenerateImageRequest"
    assert _violations(error) == [("request body", error.details())]
    [line] = _generate_lines(server, connect)
    assert line["status"] == "INVALID_ARGUMENT"
    assert line["principal"]["sub"] == "test-user"  # authenticated before the body was read
    assert server.running.engine.stats.jobs_started == 0
    _assert_quiet(caplog)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({PROMPT: LONE_SURROGATE}, ["prompt"]),
        ({PROMPT: OVERLONG_SLASH}, ["prompt"]),
        ({PROMPT: b"a fox", NEGATIVE_PROMPT: NOT_UTF8}, ["negative_prompt"]),
        ({PROMPT: b"a fox", MODEL: LONE_SURROGATE}, ["model"]),
        ({PROMPT: OVERLONG_SLASH, NEGATIVE_PROMPT: LONE_SURROGATE}, ["prompt", "negative_prompt"]),
    ],
    ids=["lone-surrogate", "overlong", "negative-prompt", "model", "two-fields"],
)
def test_invalid_utf8_in_a_string_field_is_invalid_argument_on_that_field(
    server, channel, connect, caplog, fields, named
):
    """Each string field holding bytes that are not UTF-8 is named, with a fixed description."""
    caplog.set_level(logging.DEBUG)
    body = b"".join(_string_field(number, value) for number, value in fields.items())
    error = _call(channel(server), body)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = _violations(error)
    assert violations == [(field, f"{field} must be valid UTF-8") for field in named]
    assert error.details() == "; ".join(description for _, description in violations)
    [line] = _generate_lines(server, connect)
    assert line["status"] == "INVALID_ARGUMENT"
    assert line["prompt_sha256"] is None and line["request"] is None  # never parsed
    _assert_quiet(caplog)


def test_garbage_from_a_certificate_without_a_token_is_unauthenticated(server, channel, caplog):
    """Authentication comes before the body: no token means UNAUTHENTICATED, whatever was sent."""
    caplog.set_level(logging.DEBUG)
    error = _call(channel(server, token=None), MALFORMED_BODIES["random-bytes"])

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    [line] = server.audit_entries(1)
    assert line["status"] == "UNAUTHENTICATED"
    _assert_quiet(caplog)


def test_a_flood_of_garbage_runs_into_the_peer_limit(start_server, channel, caplog):
    """Malformed calls count against the peer bucket: past its burst they are RESOURCE_EXHAUSTED."""
    caplog.set_level(logging.DEBUG)
    server = start_server(rate_limit={"peer_burst": 3, "peer_requests_per_minute": 1})
    raw = channel(server)
    codes = [_call(raw, MALFORMED_BODIES["random-bytes"]).code() for _ in range(5)]

    assert (
        codes == [grpc.StatusCode.INVALID_ARGUMENT] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    )
    statuses = [line["status"] for line in server.audit_entries(5)]
    assert statuses == ["INVALID_ARGUMENT"] * 3 + ["RESOURCE_EXHAUSTED"] * 2
    _assert_quiet(caplog)


def test_token_less_services_refuse_garbage_the_same_way(server, channel, caplog):
    """Health (unary) and reflection (a request stream) answer INVALID_ARGUMENT, then still work."""
    caplog.set_level(logging.DEBUG)
    raw = channel(server, token=None)
    check = raw.unary_unary(HEALTH_CHECK, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as health_error:
        check(MALFORMED_BODIES["truncated-varint"], timeout=TIMEOUT)
    reflect = raw.stream_stream(REFLECTION, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as reflection_error:
        list(reflect(iter([MALFORMED_BODIES["short-length"]]), timeout=TIMEOUT))

    for error in (health_error.value, reflection_error.value):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [field for field, _ in _violations(error)] == ["request body"]
    answer = health_pb2.HealthCheckResponse.FromString(
        check(health_pb2.HealthCheckRequest().SerializeToString(), timeout=TIMEOUT)
    )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    _assert_quiet(caplog)


@pytest.mark.parametrize("prompt", ["\u200b", "\u200d\u200c", " \u2060\ufeff\t", "\u00ad\u180e"])
def test_a_prompt_of_only_invisible_characters_is_required(server, connect, prompt):
    """Zero-width and other format characters, with or without spaces, are an empty prompt."""
    with pytest.raises(InvalidArgument) as caught:
        connect(server).generate(prompt, steps=2, timeout=TIMEOUT)
    assert caught.value.violations == [("prompt", "prompt is required")]
    assert server.running.engine.stats.jobs_started == 0
