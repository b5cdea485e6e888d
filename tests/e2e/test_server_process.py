"""The real `pixelgate-server` process: TOML config, start-up line, SIGTERM drain, config errors."""

from __future__ import annotations

import hashlib
import io
import signal
import threading
import time
from typing import Any

import pytest
from PIL import Image

from pixelgate.client import GeneratedImage, PixelgateClient, Unavailable
from pixelgate.dev.pki import DevPkiFiles
from pixelgate.v1 import image_service_pb2 as pb

START_TIMEOUT_S = 90
"""Importing torch/diffusers and loading the model takes ~10-15 s on a small CPU box."""

ERROR_EXIT_TIMEOUT_S = 60
"""A config error stops the process before the model loads (only the imports run)."""

GRACE_S = 10.0
"""Settings.shutdown_grace_seconds's default, which `spawn`'s config leaves alone."""

LONG_STEPS = 30
"""Denoising steps of the in-flight generation: ~3 s at 256x256 on one CPU thread."""


def _client(port: int, pki: DevPkiFiles, token: str) -> PixelgateClient:
    return PixelgateClient(
        f"127.0.0.1:{port}",
        ca_file=pki.ca_cert,
        cert_file=pki.client_cert,
        key_file=pki.client_key,
        token=token,
    )


def _assert_verified_png(image: GeneratedImage, size: tuple[int, int]) -> None:
    assert hashlib.sha256(image.data).hexdigest() == image.sha256
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert (decoded.format, decoded.size) == ("PNG", size)


def test_sigterm_drains_in_flight_generation_refuses_new_calls_and_exits_0(
    spawn, pki, mint, tiny_model
):
    """On SIGTERM: the running generation completes, new calls get UNAVAILABLE, exit 0 in grace."""
    # tiny_model is requested so the model is already in model_cache: the process loads it.
    del tiny_model
    server = spawn()
    port = server.wait_serving(START_TIMEOUT_S)

    token = mint()
    with _client(port, pki, token) as client:
        [image] = client.generate("a lighthouse", steps=2, seed=3)
        _assert_verified_png(image, (64, 64))

        running = threading.Event()
        outcome: dict[str, Any] = {}

        def long_generation() -> None:
            events: list[Any] = []
            try:
                for event in client.stream(
                    "a lighthouse", steps=LONG_STEPS, width=256, height=256, seed=9, timeout=60
                ):
                    events.append(event)
                    if isinstance(event, pb.Progress) and event.step >= 1:
                        running.set()
            except BaseException as error:  # reported by the main thread
                outcome["error"] = error
            finally:
                outcome["events"] = events
                outcome["finished_at"] = time.monotonic()
                running.set()

        worker = threading.Thread(target=long_generation, daemon=True)
        worker.start()
        assert running.wait(30), "the long generation never started denoising"
        assert "error" not in outcome, outcome.get("error")

        server.process.send_signal(signal.SIGTERM)
        sigterm_at = time.monotonic()
        server.wait_for(server.stderr, r"stopping: in-flight calls have", 10)
        time.sleep(0.2)  # the stop itself follows the log line at once

        with _client(port, pki, token) as late_client, pytest.raises(Unavailable):
            late_client.generate("a lighthouse", steps=2, timeout=10)

        worker.join(GRACE_S + 5)
        assert not worker.is_alive(), (
            "the in-flight generation did not finish within the grace period"
        )
        assert "error" not in outcome, f"in-flight generation failed: {outcome['error']!r}"
        images = [e for e in outcome["events"] if isinstance(e, GeneratedImage)]
        steps = [e.step for e in outcome["events"] if isinstance(e, pb.Progress) and e.step]
        assert steps == list(range(1, LONG_STEPS + 1))
        [long_image] = images
        _assert_verified_png(long_image, (256, 256))
        # Denoising had begun before SIGTERM and the image came after it: it was in flight.
        assert outcome["finished_at"] > sigterm_at

    returncode = server.process.wait(GRACE_S + 5)
    exited_after = time.monotonic() - sigterm_at
    assert returncode == 0, server.stderr()[-4000:]
    assert exited_after < GRACE_S + 2


def test_unknown_config_key_exits_2_naming_it(spawn):
    """A config with an unknown key makes the process exit 2 with one stderr line naming the key."""
    server = spawn(shutdown_grace_secs=5)
    assert server.process.wait(ERROR_EXIT_TIMEOUT_S) == 2
    lines = server.stderr().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("pixelgate-server: ")
    assert "shutdown_grace_secs" in lines[0]
    assert "serving on port" not in server.stdout()


def test_missing_tls_files_exit_2_pointing_at_make_certs(spawn, tmp_path):
    """Missing TLS files: exit 2, one stderr line naming the file and `make certs`."""
    missing = DevPkiFiles.at(tmp_path / "no-such-pki")
    server = spawn(tls={"cert_file": missing.server_cert, "key_file": missing.server_key})
    assert server.process.wait(ERROR_EXIT_TIMEOUT_S) == 2
    lines = server.stderr().splitlines()
    assert len(lines) == 1, lines
    assert "make certs" in lines[0]
    assert str(missing.server_key) in lines[0] or str(missing.server_cert) in lines[0]
    assert "serving on port" not in server.stdout()
