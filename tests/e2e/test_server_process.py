"""The real `pixelgate-server` process: TOML config, start-up line, SIGTERM drain, config errors."""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pixelgate.client import GeneratedImage, PixelgateClient, Unavailable
from pixelgate.dev import DEV_AUDIENCE, DEV_ISSUER
from pixelgate.dev.pki import DevPkiFiles
from pixelgate.v1 import image_service_pb2 as pb

START_TIMEOUT_S = 90
"""Importing torch/diffusers and loading the model takes ~10-15 s on a small CPU box."""

ERROR_EXIT_TIMEOUT_S = 60
"""A config error stops the process before the model loads (only the imports run)."""

GRACE_S = 10.0
"""Settings.shutdown_grace_seconds's default, which the config below leaves alone."""

LONG_STEPS = 30
"""Denoising steps of the in-flight generation: ~3 s at 256x256 on one CPU thread."""

SERVING = r"^pixelgate: serving on port (\d+)$"


def _toml_path(path: Path) -> str:
    # TOML literal strings: no escapes, so any temp path goes through as is.
    return f"'{path}'"


def _write_config(directory: Path, pki: DevPkiFiles, cache_dir: Path, extra: str = "") -> Path:
    config = directory / "pixelgate.toml"
    config.write_text(
        f"""\
host = "127.0.0.1"
port = 0
cache_dir = {_toml_path(cache_dir)}
{extra}
[tls]
cert_file = {_toml_path(pki.server_cert)}
key_file = {_toml_path(pki.server_key)}
client_ca_file = {_toml_path(pki.ca_cert)}

[rate_limit]
requests_per_minute = 6000
burst = 1000

[[auth.issuers]]
issuer = "{DEV_ISSUER}"
audiences = ["{DEV_AUDIENCE}"]
public_key_files = [{_toml_path(pki.verification_key)}]
""",
        encoding="utf-8",
    )
    return config


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELGATE_")}
    env["PYTHONUNBUFFERED"] = "1"
    # One intra-op thread: on a small shared CPU box torch's default thread team spins
    # at every barrier when another process holds a core, and a step can slow 20-fold.
    env["OMP_NUM_THREADS"] = "1"
    return env


class ServerProcess:
    """A `python -m pixelgate.server` child with stdout and stderr in files."""

    def __init__(self, config: Path, directory: Path) -> None:
        self.stdout_path = directory / "server.stdout"
        self.stderr_path = directory / "server.stderr"
        with self.stdout_path.open("wb") as stdout, self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pixelgate.server", "--config", str(config)],
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=_env(),
            )

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, read: Callable[[], str], pattern: str, timeout: float) -> re.Match[str]:
        """Polls an output until `pattern` shows up; fails if the process exits first."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, read(), re.MULTILINE)
            if match:
                return match
            if self.process.poll() is not None:
                pytest.fail(
                    f"server exited {self.process.returncode} first:\n{self.stderr()[-4000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern!r} within {timeout} s:\n{self.stderr()[-4000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[Path], ServerProcess]]:
    """Starts server processes; kills any still running after the test."""
    started: list[ServerProcess] = []

    def _spawn(config: Path) -> ServerProcess:
        server = ServerProcess(config, tmp_path)
        started.append(server)
        return server

    try:
        yield _spawn
    finally:
        for server in started:
            server.kill()


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
    spawn, pki, mint, model_cache, tiny_model, tmp_path
):
    """On SIGTERM: the running generation completes, new calls get UNAVAILABLE, exit 0 in grace."""
    # tiny_model is requested so the model is already in model_cache: the process loads it.
    del tiny_model
    server = spawn(_write_config(tmp_path, pki, model_cache))
    port = int(server.wait_for(server.stdout, SERVING, START_TIMEOUT_S).group(1))
    assert port > 0

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

        started_at = time.monotonic()
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
        assert outcome["finished_at"] > sigterm_at  # it really was in flight at SIGTERM
        assert outcome["finished_at"] - started_at > 1.0, (
            "too quick to prove the drain; raise LONG_STEPS"
        )

    returncode = server.process.wait(GRACE_S + 5)
    exited_after = time.monotonic() - sigterm_at
    assert returncode == 0, server.stderr()[-4000:]
    assert exited_after < GRACE_S + 2


def test_unknown_config_key_exits_2_naming_it(spawn, pki, model_cache, tmp_path):
    """A config with an unknown key makes the process exit 2 with one stderr line naming the key."""
    server = spawn(_write_config(tmp_path, pki, model_cache, extra="shutdown_grace_secs = 5"))
    assert server.process.wait(ERROR_EXIT_TIMEOUT_S) == 2
    lines = server.stderr().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("pixelgate-server: ")
    assert "shutdown_grace_secs" in lines[0]
    assert "serving on port" not in server.stdout()


def test_missing_tls_files_exit_2_pointing_at_make_certs(spawn, pki, model_cache, tmp_path):
    """Missing TLS files: exit 2, one stderr line naming the file and `make certs`."""
    missing = DevPkiFiles.at(tmp_path / "no-such-pki")
    config = _write_config(tmp_path, pki, model_cache)
    config.write_text(
        config.read_text(encoding="utf-8")
        .replace(str(pki.server_cert), str(missing.server_cert))
        .replace(str(pki.server_key), str(missing.server_key)),
        encoding="utf-8",
    )
    server = spawn(config)
    assert server.process.wait(ERROR_EXIT_TIMEOUT_S) == 2
    lines = server.stderr().splitlines()
    assert len(lines) == 1, lines
    assert "make certs" in lines[0]
    assert str(missing.server_key) in lines[0] or str(missing.server_cert) in lines[0]
    assert "serving on port" not in server.stdout()
