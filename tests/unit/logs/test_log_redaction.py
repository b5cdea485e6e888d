"""The process log (configure_logging): no credential in any written line, from any logger.

Each test logs through the real pipeline (queue, listener thread, stderr handler) into a
buffer, then reads what was written.
"""

from __future__ import annotations

import atexit
import io
import logging
import logging.handlers
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator

import grpc
import grpc.aio
import pytest
from grpc._cython import cygrpc
from support import EventLoopThread

from pixelgate.server.logs.setup import QUIET_LIBRARIES, configure_logging

GRPC_CORE_LOGGER = "grpc._cython.cygrpc"
"""The logger grpcio's Cython layer writes to (metadata decoding, servicer errors)."""

GENERATE = "/pixelgate.v1.ImageService/GenerateImage"

EXECUTE_BATCH_ERROR = f"ExecuteBatchError raised in core by servicer method [{GENERATE}]"
"""grpcio's message, formatted by grpcio before logging (no args), with a traceback."""


def _fresh_pem_key() -> str:
    """A private key generated for this run (none is committed), as PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
        .strip()
    )


PEM_KEY = _fresh_pem_key()


@pytest.fixture
def process_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Callable[..., str]]]:
    """Starts configure_logging on a buffer; the callable it returns gives the text written.

    By default that callable first stops the listener, which writes out what is queued.
    """
    root = logging.getLogger()
    saved_levels = {name: logging.getLogger(name).level for name in ("", *QUIET_LIBRARIES)}
    running: list[logging.handlers.QueueListener] = []

    def start(level: str = "INFO") -> Callable[..., str]:
        buffer = io.StringIO()
        monkeypatch.setattr(sys, "stderr", buffer)
        listener = configure_logging(level)
        atexit.unregister(listener.stop)
        running.append(listener)

        def written(stop: bool = True) -> str:
            if stop and listener in running:
                running.remove(listener)
                listener.stop()
            return buffer.getvalue()

        return written

    yield start
    for listener in running:
        listener.stop()
    for handler in list(root.handlers):
        if isinstance(handler, logging.handlers.QueueHandler):
            root.removeHandler(handler)
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def token(mint: Callable[..., str]) -> str:
    """A real signed access token (header.payload.signature)."""
    return mint()


def _assert_no_part_of(token: str, text: str) -> None:
    _header, payload, signature = token.split(".")
    for segment in (payload, signature):
        assert segment not in text
        assert segment[:16] not in text
    assert "eyJ" not in text


def test_a_token_passed_as_an_argument_is_not_written(process_log, token):
    """A JWT in a record's args: the line is written, with the token replaced."""
    written = process_log()

    logging.getLogger("pixelgate.server").warning("refused token %s from %s", token, "peer-7")

    text = written()
    _assert_no_part_of(token, text)
    assert "refused token [REDACTED] from peer-7" in text


def test_a_token_inside_the_message_is_not_written(process_log, token):
    """A JWT already formatted into the message string is replaced too."""
    written = process_log()

    logging.getLogger("pixelgate.server").info(f"token={token};")

    text = written()
    _assert_no_part_of(token, text)
    assert "token=[REDACTED];" in text


@pytest.mark.parametrize(
    "value",
    [b"\xff\xfeBearer %s", b"Bearer \xff%s", b"Bearer%s\xff"],
    ids=["bytes-before-scheme", "bytes-before-token", "bytes-after-token"],
)
def test_a_token_in_a_bytes_repr_is_not_written(process_log, token, value):
    """Non-UTF-8 bytes around a JWT, logged as a bytes repr (b'...'): no part of it is written."""
    written = process_log()

    logging.getLogger("some.library").error("header value %s", value % token.encode())

    text = written()
    _assert_no_part_of(token, text)
    assert "header value b" in text


def test_a_token_in_an_exception_and_its_traceback_is_not_written(process_log, token):
    """logger.exception(): the exception text, its chained cause and the traceback are cleaned."""
    written = process_log()

    try:
        try:
            raise KeyError(token)
        except KeyError as cause:
            raise ValueError(f"cannot verify {token}") from cause
    except ValueError:
        logging.getLogger("pixelgate.server").exception("verification failed")

    text = written()
    _assert_no_part_of(token, text)
    assert "Traceback (most recent call last)" in text
    assert "ValueError: cannot verify [REDACTED]" in text


def test_grpcio_records_are_cleaned_like_our_own(process_log, token):
    """A record from grpcio's own logger (not pixelgate's) is written without the token."""
    written = process_log()

    logging.getLogger(GRPC_CORE_LOGGER).error(
        "metadata %s", (("authorization", f"Bearer {token}"), ("user-agent", "grpc-go/1.5"))
    )

    text = written()
    _assert_no_part_of(token, text)
    assert "('authorization', '[REDACTED]'), ('user-agent', 'grpc-go/1.5')" in text


def test_grpcio_invalid_encoding_record_becomes_one_warning_line_without_the_value(
    process_log, token
):
    """grpcio's `Invalid encoding on b'...'` (with a traceback): one WARNING line, no value."""
    written = process_log()
    value = b"\xff\xfeBearer " + token.encode()

    try:
        value.decode("utf8")
    except UnicodeDecodeError:
        logging.getLogger(GRPC_CORE_LOGGER).exception("Invalid encoding on %s", value)

    text = written()
    _assert_no_part_of(token, text)
    [line] = text.splitlines()
    assert f" WARNING {GRPC_CORE_LOGGER}: " in line
    assert "not UTF-8" in line
    assert "Bearer" not in line


@pytest.mark.parametrize(
    ("message", "secret", "kept"),
    [
        ("authorization: Bearer %s", "opaque-Token-0123456789", "authorization: "),
        ("Bearer: %s", "opaque-Token-0123456789", "Bearer: [REDACTED]"),
        ("short %s", "Authorization: Basic YTpi", "short Authorization: Basic [REDACTED]"),
        ("header %s", "Authorization=Basic dXNlcjpwYXNzd29yZA==", "header "),
        ("sent %s", "Basic dXNlcjpwYXNzd29yZA==", "sent Basic [REDACTED]"),
        ('json {"authorization": "%s"}', "tok_4f2a9c", 'json {"authorization": "[REDACTED]"}'),
        ("loaded %s", PEM_KEY, "loaded [REDACTED]"),
    ],
    ids=[
        "bearer-opaque",
        "bearer-colon",
        "basic-short",
        "basic-pair",
        "basic",
        "authorization-json",
        "pem-private-key",
    ],
)
def test_other_credential_shapes_are_not_written(process_log, message, secret, kept):
    """Bearer and Basic credentials, authorization values and PEM private keys are replaced."""
    written = process_log()

    logging.getLogger("pixelgate.server").warning(message, secret)

    text = written()
    for part in ("0123456789", "YTpi", "dXNlcjpwYXNzd29yZA", "tok_4f2a9c", "MIGHAgEAMBMGByqGSM49"):
        assert part not in text
    assert kept in text


def test_a_line_without_credentials_is_written_unchanged(process_log):
    """Ordinary lines, including ones that mention the words, are written exactly as formatted."""
    written = process_log()
    lines = [
        "default model tiny-sd-test ready: serving on 127.0.0.1:50051 (100% of 4 slots)",
        "missing bearer access token; authorization header must be 'Bearer <access token>'",
        "basic settings loaded; Basic Auth and Bearer Token are named in the docs",
    ]

    for line in lines:
        logging.getLogger("pixelgate.server").info("%s", line)

    assert [each.split(": ", 1)[1] for each in written().splitlines()] == lines


def test_arguments_that_do_not_fit_the_format_still_write_no_token(process_log, token):
    """A log call whose args don't fit its format leaks no token via logging's error report."""
    written = process_log()

    logging.getLogger("pixelgate.server").info("%d tokens", token)

    text = written()
    _assert_no_part_of(token, text)
    assert "tokens" in text


def test_a_record_that_cannot_be_rendered_is_withheld_and_logging_goes_on(process_log, token):
    """A record whose exception can't be formatted is withheld (no error report); logs go on."""
    written = process_log()

    logging.getLogger("pixelgate.server").error("token %s", token, exc_info=("not", "an exc_info"))
    logging.getLogger("pixelgate.server").info("next line")

    text = written()
    _assert_no_part_of(token, text)
    assert "--- Logging error ---" not in text
    assert "a log record was withheld" in text
    assert text.endswith("pixelgate.server: next line\n")


def test_grpcio_execute_batch_error_is_one_info_line_saying_the_peer_went_away(process_log):
    """grpcio's ExecuteBatchError traceback (a stream cancelled mid-send) becomes one INFO line."""
    written = process_log()

    try:
        raise cygrpc.ExecuteBatchError("Failed grpc_call_start_batch: 8")
    except cygrpc.ExecuteBatchError:
        logging.getLogger(GRPC_CORE_LOGGER).exception(EXECUTE_BATCH_ERROR)

    [line] = written().splitlines()
    assert f" INFO {GRPC_CORE_LOGGER}: " in line
    assert GENERATE in line
    assert "peer went away" in line


def test_the_demoted_execute_batch_line_is_not_written_above_info(process_log):
    """At --log-level WARNING the demoted line is dropped, like any INFO line."""
    written = process_log("WARNING")

    logging.getLogger(GRPC_CORE_LOGGER).error(EXECUTE_BATCH_ERROR)
    logging.getLogger("pixelgate.server").warning("still written")

    [line] = written().splitlines()
    assert line.endswith("pixelgate.server: still written")


STALLED_CALLS = 5
"""Stalled calls to try: a call whose close reaches grpcio first is not logged (a race)."""


async def _flood(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    while True:  # more than any flow-control window: a reader that stops stalls the sends
        yield b"x" * (1 << 20)


def _shows_up(read: Callable[[], str], text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while text not in read():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_grpcio_s_own_execute_batch_error_from_a_stalled_reader_is_demoted(
    process_log, event_loop_thread: EventLoopThread
):
    """A real grpcio server whose reader stalls past the deadline: grpcio's record is one line.

    Pins the logger and message grpcio itself uses, so an upgrade that changes them fails here.
    """
    written = process_log()
    handler = grpc.method_handlers_generic_handler(
        "test.Stalled", {"Flood": grpc.unary_stream_rpc_method_handler(_flood)}
    )

    async def serve() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = event_loop_thread.run(serve())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            for _attempt in range(STALLED_CALLS):
                call = channel.unary_stream("/test.Stalled/Flood")(b"", timeout=1.0)
                next(call)  # then read no more: the server's sends wait until the deadline
                assert call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                if _shows_up(lambda: written(stop=False), "peer went away", 2.0):
                    break
            else:
                pytest.fail(f"no demoted line after {STALLED_CALLS} stalled calls:\n{written()}")
    finally:
        event_loop_thread.run(server.stop(0))

    text = written()
    assert "Traceback" not in text
    assert " ERROR " not in text
    assert f"INFO {GRPC_CORE_LOGGER}: call /test.Stalled/Flood ended while a send" in text


@pytest.fixture
def library_logs_routed() -> Iterator[None]:
    """diffusers and transformers log through the process log for this test, then as before."""
    from pixelgate.server.models.library_logs import restore_library_logs, route_library_logs

    route_library_logs()
    yield
    restore_library_logs()


def test_model_libraries_log_through_the_process_log_redacted(
    process_log, library_logs_routed, token
):
    """A transformers or diffusers warning is written by the process log, token redacted."""
    written = process_log()
    logging.getLogger("transformers.models.clip").warning("loading with %s", token)
    logging.getLogger("diffusers.pipelines").warning("diffusers says hello")
    text = written()
    assert "transformers.models.clip: loading with [REDACTED]" in text
    assert "diffusers.pipelines: diffusers says hello" in text
    _assert_no_part_of(token, text)


def test_the_torchvision_fallback_notice_is_not_start_up_noise(process_log, library_logs_routed):
    """transformers' notice that it uses PIL is dropped at INFO; its other warnings stay."""
    written = process_log()
    log = logging.getLogger("transformers.utils.import_utils")
    log.warning(
        "`CLIPImageProcessor` requires torchvision (not installed); falling back to "
        "`CLIPImageProcessorPil` for backward compatibility."
    )
    log.warning("a real warning")
    text = written()
    assert "torchvision" not in text
    assert "a real warning" in text
