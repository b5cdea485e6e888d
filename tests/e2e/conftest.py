"""End-to-end fixtures: the real `pixelgate-server` process, from a TOML config file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from processes import ServerProcess, merge, server_settings, write_config

from pixelgate.dev.pki import DevPkiFiles


@pytest.fixture
def spawn(
    pki: DevPkiFiles, model_cache: Path, tmp_path: Path
) -> Iterator[Callable[..., ServerProcess]]:
    """Starts `python -m pixelgate.server --config FILE` children; kills any left at the end.

    The config is a test server's (the test PKI, models from `model_cache`, roomy rate
    limits) with the keyword arguments merged into its sections. A test that needs the
    model to load requests `tiny_model` too, so the model is built in `model_cache` first.
    """
    started: list[ServerProcess] = []

    def _spawn(**overrides: Any) -> ServerProcess:
        name = f"server-{len(started)}"
        roomy = {
            "cache_dir": model_cache,
            "rate_limit": {"requests_per_minute": 6000, "burst": 1000},
        }
        settings = server_settings(pki, **merge(roomy, overrides))
        server = ServerProcess(write_config(tmp_path / f"{name}.toml", settings), tmp_path, name)
        started.append(server)
        return server

    try:
        yield _spawn
    finally:
        for server in started:
            server.stop(grace=0)
