"""grpcurl against a real mTLS server: reflection, health, streaming, auth errors, TLS refusal."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pixelgate.dev.pki import DevPkiFiles

TIMEOUT_S = 30
"""Wall-clock limit for every grpcurl run."""

CONNECT_TIMEOUT_S = "3"
"""grpcurl's -connect-timeout where a dial is expected to fail (its default is 10 s)."""


def _find_grpcurl() -> str:
    found = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which(
        "grpcurl"
    )
    if found is None:
        pytest.fail("grpcurl not found next to the interpreter or on PATH; pip install -e '.[dev]'")
    return found


@pytest.fixture(scope="module")
def grpcurl() -> str:
    """Path of the grpcurl executable."""
    return _find_grpcurl()


@pytest.fixture
def run_grpcurl(
    grpcurl: str, pki: DevPkiFiles, server: Any
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs `grpcurl TLS FLAGS TARGET POSITIONAL`; TLS defaults to the test PKI's mTLS flags."""

    def _run(
        *positional: str, flags: tuple[str, ...] = (), tls: list[str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        if tls is None:
            tls = [
                "-cacert",
                str(pki.ca_cert),
                "-cert",
                str(pki.client_cert),
                "-key",
                str(pki.client_key),
            ]
        command = [grpcurl, *tls, *flags, server.target, *positional]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )

    return _run


def _json_stream(text: str) -> list[dict[str, Any]]:
    """The JSON objects grpcurl printed one after another (pretty-printed, concatenated)."""
    decoder = json.JSONDecoder()
    messages: list[dict[str, Any]] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return messages
        message, position = decoder.raw_decode(text, position)
        messages.append(message)


def test_reflection_lists_the_services_without_a_token(run_grpcurl):
    """`grpcurl list` over mTLS, with no access token, shows ImageService and Health."""
    result = run_grpcurl("list")
    assert result.returncode == 0, result.stderr
    services = result.stdout.split()
    assert "pixelgate.v1.ImageService" in services
    assert "grpc.health.v1.Health" in services


def test_reflection_describes_the_request_fields(run_grpcurl):
    """`grpcurl describe` shows GenerateImageRequest's fields with their numbers."""
    result = run_grpcurl("describe", "pixelgate.v1.GenerateImageRequest")
    assert result.returncode == 0, result.stderr
    assert "string prompt = 1;" in result.stdout
    assert "uint32 width = 4;" in result.stdout
    assert "optional uint64 seed = 8;" in result.stdout


def test_reflection_describe_shows_the_field_comments(run_grpcurl):
    """`grpcurl describe` shows the proto's field comments (the contract's documentation)."""
    result = run_grpcurl("describe", "pixelgate.v1.GenerateImageRequest")
    assert result.returncode == 0, result.stderr
    assert "multiple of 8" in result.stdout


def test_health_check_is_serving_without_a_token(run_grpcurl):
    """grpc.health.v1.Health/Check needs mTLS but no token, and reports SERVING."""
    result = run_grpcurl("grpc.health.v1.Health/Check")
    assert result.returncode == 0, result.stderr
    assert _json_stream(result.stdout) == [{"status": "SERVING"}]


def test_generate_image_streams_progress_chunks_and_a_matching_digest(run_grpcurl, mint):
    """GenerateImage: progress, then chunks hashing to the complete's sha256, a 64x64 PNG."""
    result = run_grpcurl(
        "pixelgate.v1.ImageService/GenerateImage",
        flags=(
            "-H",
            f"authorization: Bearer {mint()}",
            "-d",
            '{"prompt":"a lighthouse","steps":2,"seed":"7"}',
        ),
    )
    assert result.returncode == 0, result.stderr
    messages = _json_stream(result.stdout)
    kinds = [next(iter(message)) for message in messages]

    progress = [m["progress"] for m in messages if "progress" in m]
    assert progress[0]["state"] == "STATE_QUEUED"
    assert [p.get("step") for p in progress[1:]] == [1, 2]
    assert all(p["totalSteps"] == 2 for p in progress)
    assert kinds[: len(progress)] == ["progress"] * len(progress)
    assert kinds[-1] == "complete"
    assert set(kinds[len(progress) : -1]) == {"chunk"}

    data = b""
    for message in messages[len(progress) : -1]:
        chunk = message["chunk"]
        assert int(chunk.get("offset", "0")) == len(data)  # in order, no gaps
        assert chunk.get("imageIndex", 0) == 0
        data += base64.b64decode(chunk["data"])
    complete = messages[-1]["complete"]
    assert hashlib.sha256(data).hexdigest() == complete["sha256"]
    assert int(complete["sizeBytes"]) == len(data)
    assert (complete["mimeType"], complete["width"], complete["height"]) == ("image/png", 64, 64)
    assert (complete["seed"], complete["steps"], complete["model"]) == ("7", 2, "tiny-sd-test")
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size) == ("PNG", (64, 64))


def test_list_models_without_a_token_is_unauthenticated(run_grpcurl):
    """ListModels with no authorization header fails with Code: Unauthenticated."""
    result = run_grpcurl("pixelgate.v1.ImageService/ListModels")
    assert result.returncode != 0
    assert "Code: Unauthenticated" in result.stderr
    assert "tiny-sd-test" not in result.stdout


def test_list_models_without_the_scope_is_permission_denied(run_grpcurl, mint):
    """A valid token without models:read gets Code: PermissionDenied from ListModels."""
    token = mint(scopes=["images:generate"])
    result = run_grpcurl(
        "pixelgate.v1.ImageService/ListModels", flags=("-H", f"authorization: Bearer {token}")
    )
    assert result.returncode != 0
    assert "Code: PermissionDenied" in result.stderr
    assert "tiny-sd-test" not in result.stdout


def test_list_models_with_the_scope_lists_the_tiny_model(run_grpcurl, mint):
    """ListModels with a models:read token succeeds (so the refusals above are about tokens)."""
    token = mint(scopes=["models:read"])
    result = run_grpcurl(
        "pixelgate.v1.ImageService/ListModels", flags=("-H", f"authorization: Bearer {token}")
    )
    assert result.returncode == 0, result.stderr
    [response] = _json_stream(result.stdout)
    assert [m["id"] for m in response["models"]] == ["tiny-sd-test"]


def test_a_client_without_a_certificate_is_refused_at_the_handshake(run_grpcurl, pki):
    """TLS that trusts the CA but presents no client certificate cannot even reach Health."""
    assert run_grpcurl("grpc.health.v1.Health/Check").returncode == 0  # the server is up
    result = run_grpcurl(
        "grpc.health.v1.Health/Check",
        flags=("-connect-timeout", CONNECT_TIMEOUT_S),
        tls=["-cacert", str(pki.ca_cert)],
    )
    assert result.returncode != 0
    assert "Failed to dial target host" in result.stderr
    assert "SERVING" not in result.stdout


def test_plaintext_is_refused(run_grpcurl):
    """There is no plaintext port: grpcurl -plaintext cannot reach Health."""
    assert run_grpcurl("grpc.health.v1.Health/Check").returncode == 0  # the server is up
    result = run_grpcurl(
        "grpc.health.v1.Health/Check",
        flags=("-connect-timeout", CONNECT_TIMEOUT_S),
        tls=["-plaintext"],
    )
    assert result.returncode != 0
    assert "Failed to dial target host" in result.stderr
    assert "SERVING" not in result.stdout
