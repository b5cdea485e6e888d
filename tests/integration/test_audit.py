"""Audit: one JSON line per call that says who did what, never what they wrote."""

from __future__ import annotations

import hashlib
import json
import logging
import time

import pytest

from pixelgate.client import InvalidArgument, Unauthenticated


def _entries(caplog, expected: int = 1) -> list[dict]:
    # The server writes a call's line as the call ends, which can be just after
    # the client has its answer: wait briefly for the lines to arrive.
    deadline = time.monotonic() + 5
    while True:
        entries = [
            json.loads(r.getMessage()) for r in caplog.records if r.name == "pixelgate.audit"
        ]
        if len(entries) >= expected or time.monotonic() > deadline:
            return entries
        time.sleep(0.01)


def test_a_generation_is_audited_with_parameters_cost_and_digests(server, connect, mint, caplog):
    """The line names the caller, the parameters, the GPU cost, and hashes of prompt and image."""
    caplog.set_level(logging.INFO, logger="pixelgate.audit")
    token = mint(subject="carol", client_id="svc-carol")
    prompt = "a secret prompt about zebras"
    [image] = connect(server, token=token).generate(prompt, steps=4, width=128, height=64, seed=9)

    [entry] = [e for e in _entries(caplog) if e["method"].endswith("/GenerateImage")]
    assert entry["status"] == "OK"
    assert entry["principal"] == {
        "iss": "https://issuer.pixelgate.invalid",
        "sub": "carol",
        "client_id": "svc-carol",
        "certificate": "spiffe://pixelgate.invalid/client/dev",
    }
    assert entry["request"] == {
        "model": "tiny-sd-test",
        "width": 128,
        "height": 64,
        "steps": 4,
        "guidance_scale": 7.5,
        "num_images": 1,
        "seed": 9,
        "output_format": "PNG",
    }
    assert entry["gpu_cost"] == pytest.approx(128 * 64 / 512**2 * 4, abs=1e-3)
    assert entry["prompt_sha256"] == hashlib.sha256(prompt.encode()).hexdigest()
    assert entry["image_sha256"] == [image.sha256]
    assert entry["duration_ms"] > 0
    assert entry["peer"].startswith("ipv4:127.0.0.1:")


def test_refusals_are_audited_and_nothing_secret_is_logged(server, connect, mint, caplog):
    """Bad input and bad tokens show up with their status; the token and prompt never do."""
    caplog.set_level(logging.DEBUG)
    token = mint(subject="dave")
    with pytest.raises(InvalidArgument):
        connect(server, token=token).generate("zebras in a secret place", width=100)
    with pytest.raises(Unauthenticated):
        connect(server, token=token + "x").list_models()

    statuses = [(e["method"].rsplit("/", 1)[1], e["status"]) for e in _entries(caplog, 2)]
    assert ("GenerateImage", "INVALID_ARGUMENT") in statuses
    assert ("ListModels", "UNAUTHENTICATED") in statuses
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert token not in everything
    assert token.split(".")[2] not in everything
    assert "zebras" not in everything
