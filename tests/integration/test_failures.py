"""Unexpected failures: INTERNAL with a generic message, details only in the server log."""

from __future__ import annotations

import logging

import pytest
from support import FakeRuntime

from pixelgate.client import ServerError


def _explode(batch: object) -> None:
    raise RuntimeError("CUDA error at /opt/secret/path/kernel.cu:42")


def test_an_unexpected_failure_is_internal_and_leaks_nothing(start_server, connect, caplog):
    """The caller gets INTERNAL 'internal error'; the traceback goes to the server log only."""
    caplog.set_level(logging.ERROR, logger="pixelgate.errors")
    # The pipeline fails after its first step with an exception full of internals.
    exploding = FakeRuntime(fail=_explode, fail_at_step=1)
    server = start_server(loader=lambda settings, device: exploding)
    client = connect(server)
    with pytest.raises(ServerError) as caught:
        client.generate("a fox", steps=3)
    assert caught.value.code.name == "INTERNAL"
    assert caught.value.details == "internal error"
    assert any("/opt/secret/path" in r.exc_text for r in caplog.records if r.exc_text)
    assert server.running.engine.stats.jobs_failed == 1
    assert client.list_models()  # the server carries on
