"""Audit: one JSON line per call that says who did what, never what they wrote."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest

from pixelgate.client import InvalidArgument, Unauthenticated


def test_a_generation_is_audited_with_parameters_cost_and_digests(server, connect, mint):
    """The line names the caller, the parameters, the GPU cost, and hashes of prompt and image."""
    token = mint(subject="carol", client_id="svc-carol")
    prompt = "a secret prompt about zebras"
    [image] = connect(server, token=token).generate(prompt, steps=4, width=128, height=64, seed=9)

    [entry] = [e for e in server.audit_entries() if e["method"].endswith("/GenerateImage")]
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

    audit = server.audit_entries(2)
    statuses = [(e["method"].rsplit("/", 1)[1], e["status"]) for e in audit]
    assert ("GenerateImage", "INVALID_ARGUMENT") in statuses
    assert ("ListModels", "UNAUTHENTICATED") in statuses
    everything = "\n".join([*(r.getMessage() for r in caplog.records), json.dumps(audit)])
    assert token not in everything
    assert token.split(".")[2] not in everything
    assert "zebras" not in everything


def test_the_audit_file_is_private_and_kept_across_restarts(start_server, connect, tmp_path):
    """A file destination is created readable by its owner only and appended to, not replaced."""
    destination = tmp_path / "private" / "audit.jsonl"
    destination.parent.mkdir()
    first = start_server(audit={"destination": str(destination)})
    connect(first).list_models()
    first.audit_entries(1)
    first.stop()
    assert destination.stat().st_mode & 0o777 == 0o600

    second = start_server(audit={"destination": str(destination)})
    connect(second).list_models()
    assert len(second.audit_entries(2)) == 2


def test_quiet_logging_does_not_silence_the_audit(server, connect):
    """The audit is a stream of its own: a log level of WARNING still writes every line."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    try:
        connect(server).list_models()
        [entry] = server.audit_entries()
    finally:
        root.setLevel(level)
    assert entry["status"] == "OK"
