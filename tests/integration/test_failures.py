"""Unexpected failures: INTERNAL with a generic message, details only in the server log."""

from __future__ import annotations

import logging

import pytest
from support import is_warm_up

from pixelgate.client import ServerError


class ExplodingModel:
    """A model whose pipeline fails (after warm-up) with an exception full of internals."""

    device = "cpu"
    weights_bytes = 0
    latent_channels = 4

    def run(self, batch, on_step):
        if is_warm_up(batch):
            return [None] * len(batch.seeds)
        on_step(1, batch.steps, None)
        raise RuntimeError("CUDA error at /opt/secret/path/kernel.cu:42")


def test_an_unexpected_failure_is_internal_and_leaks_nothing(start_server, connect, caplog):
    """The caller gets INTERNAL 'internal error'; the traceback goes to the server log only."""
    caplog.set_level(logging.ERROR, logger="pixelgate.errors")
    server = start_server(model=ExplodingModel())
    client = connect(server)
    with pytest.raises(ServerError) as caught:
        client.generate("a fox", steps=3)
    assert caught.value.code.name == "INTERNAL"
    assert caught.value.details == "internal error"
    assert any("/opt/secret/path" in r.exc_text for r in caplog.records if r.exc_text)
    assert server.running.engine.stats.jobs_failed == 1
    assert client.list_models()  # the server carries on
