"""Metrics as an operator sees them: a scrape of `/metrics` after real calls over mTLS."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from support import ServerUnderTest

from pixelgate.client import (
    DeadlineExceeded,
    InvalidArgument,
    PermissionDenied,
    PixelgateClient,
    RateLimited,
    Unauthenticated,
)
from pixelgate.dev import DEV_AUDIENCE, DEV_ISSUER
from pixelgate.dev.pki import DevPkiFiles
from pixelgate.dev.tokens import SigningKey, mint_access_token
from pixelgate.v1 import image_service_pb2 as pb
from pixelgate.v1 import image_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(90)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

MODEL = "tiny-sd-test"
LIST_MODELS = "pixelgate.v1.ImageService/ListModels"


def scrape(server: ServerUnderTest, path: str = "/metrics") -> str:
    """The text a Prometheus scrape of `server` gets."""
    port = server.running.metrics_port
    assert port is not None, "metrics are off"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return str(response.read().decode("utf-8"))


def samples(text: str) -> Samples:
    """Every sample of a scrape by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    """The sample `name` with exactly `labels`; 0 when absent (a counter never touched)."""
    return found.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def metered(start_server: Callable[..., ServerUnderTest]) -> ServerUnderTest:
    """A server with metrics on a free port, a memory budget the tiny model fits only at
    small sizes, a one-word prompt denylist, and a caller request bucket of three."""
    return start_server(
        metrics={"enabled": True, "address": "127.0.0.1:0"},
        engine={"memory_budget_mb": 2000},
        safety={"prompt_denylist": ["forbidden"]},
        rate_limit={"burst": 3, "requests_per_minute": 1},
    )


def test_a_scrape_after_real_calls_shows_what_each_call_did(
    metered: ServerUnderTest,
    connect: Callable[..., PixelgateClient],
    mint: Callable[..., str],
    pki: DevPkiFiles,
) -> None:
    """Calls, generations, filtered images, every cheaply provoked refusal and the state
    gauges are in one scrape, with the values the calls produced."""
    user = connect(metered, token=mint(subject="user"))
    assert len(user.list_models()) == 1
    assert len(user.list_models()) == 1
    images = user.generate("a lighthouse", steps=3, num_images=2, seed=1)
    assert len(images) == 2
    filtered = connect(metered, token=mint(subject="filtered"))
    (blocked,) = filtered.generate("a forbidden lighthouse", steps=3, num_images=1)
    assert blocked.filtered

    with pytest.raises(InvalidArgument):
        connect(metered, token=mint(subject="invalid")).generate("x", width=7)
    with pytest.raises(Unauthenticated):
        connect(metered, token=None).list_models()
    with pytest.raises(Unauthenticated):
        connect(metered, token=mint(subject="late", lifetime_seconds=-120)).list_models()
    with pytest.raises(PermissionDenied):
        connect(metered, token=mint(subject="reader", scopes=["models:read"])).generate("x")
    greedy = connect(metered, token=mint(subject="greedy"))
    for _ in range(3):
        greedy.list_models()
    with pytest.raises(RateLimited):
        greedy.list_models()
    with pytest.raises(RateLimited, match="memory budget"):
        connect(metered, token=mint(subject="huge")).generate(
            "x", width=512, height=512, num_images=4
        )
    with pytest.raises(DeadlineExceeded, match="deadline would pass"):
        connect(metered, token=mint(subject="hurried")).generate(
            "x", width=256, height=256, steps=100, num_images=4, timeout=0.5
        )

    found = samples(scrape(metered))

    # gRPC calls (gRFC A66 names), by method and status.
    assert value(found, "grpc_server_call_started_total", grpc_method=LIST_MODELS) == 8
    duration = "grpc_server_call_duration_seconds_count"
    assert value(found, duration, grpc_method=LIST_MODELS, grpc_status="OK") == 5
    assert value(found, duration, grpc_method=LIST_MODELS, grpc_status="UNAUTHENTICATED") == 2
    assert value(found, duration, grpc_method=LIST_MODELS, grpc_status="RESOURCE_EXHAUSTED") == 1

    # Generations: images by finish reason, durations, queue wait, batches, steps.
    images_total = "pixelgate_images_total"
    assert value(found, images_total, model=MODEL, finish_reason="completed") == 2
    assert value(found, images_total, model=MODEL, finish_reason="filtered") == 1
    generation = "pixelgate_generation_duration_seconds_count"
    assert value(found, generation, model=MODEL, outcome="completed") == 2
    assert value(found, "pixelgate_queue_wait_seconds_count", model=MODEL) == 1  # the run one
    assert value(found, "pixelgate_batch_size_count", model=MODEL) == 1
    assert value(found, "pixelgate_batch_size_sum", model=MODEL) == 2
    assert value(found, "pixelgate_step_duration_seconds_count", model=MODEL) == 1

    # Refusals, by reason and detail; none of them names a caller.
    refusals = "pixelgate_refusals_total"
    assert value(found, refusals, reason="validation", detail="request") == 1
    assert value(found, refusals, reason="authentication", detail="missing_token") == 1
    assert value(found, refusals, reason="authentication", detail="expired") == 1
    assert value(found, refusals, reason="permission", detail="scope") == 1
    assert value(found, refusals, reason="rate_limit", detail="requests") == 1
    assert value(found, refusals, reason="memory_guard", detail="budget") == 1
    assert value(found, refusals, reason="admission_deadline", detail="estimate") == 1

    # State read at scrape time.
    assert value(found, "pixelgate_queue_depth", model=MODEL) == 0
    assert value(found, "pixelgate_queue_active") == 0
    assert value(found, "pixelgate_queue_capacity") == 32
    assert value(found, "pixelgate_model_state", model=MODEL, state="ready") == 1
    assert value(found, "pixelgate_model_state", model=MODEL, state="failed") == 0
    served = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    expiry = "pixelgate_certificate_expiry_seconds"
    assert value(found, expiry, certificate="served") == served.not_valid_after_utc.timestamp()
    assert value(found, expiry, certificate="client_ca") == ca.not_valid_after_utc.timestamp()
    assert value(found, "pixelgate_certificate_reload_failures_total") == 0


def test_call_metrics_count_the_message_bytes_each_way(
    metered: ServerUnderTest, channel: Callable[..., grpc.Channel]
) -> None:
    """gRFC A66's per-call message sizes: exactly the bytes of the messages the caller sent
    and received, on the wire as serialized, refused calls included."""
    stub = pb_grpc.ImageServiceStub(channel(metered))
    listed = stub.ListModels(pb.ListModelsRequest(), timeout=10)
    request = pb.GenerateImageRequest(prompt="a lighthouse", steps=2, seed=3)
    streamed = list(stub.GenerateImage(request, timeout=30))
    refused = pb.GenerateImageRequest(prompt="a lighthouse", width=7)
    with pytest.raises(grpc.RpcError) as invalid:
        list(stub.GenerateImage(refused, timeout=10))
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    found = samples(scrape(metered))
    generate = "pixelgate.v1.ImageService/GenerateImage"
    sent = "grpc_server_call_sent_total_compressed_message_size_bytes"
    received = "grpc_server_call_rcvd_total_compressed_message_size_bytes"
    ok = {"grpc_method": generate, "grpc_status": "OK"}
    assert value(found, sent + "_sum", **ok) == sum(m.ByteSize() for m in streamed)
    assert value(found, sent + "_count", **ok) == 1
    assert value(found, received + "_sum", **ok) == request.ByteSize()
    listing = {"grpc_method": LIST_MODELS, "grpc_status": "OK"}
    assert value(found, sent + "_sum", **listing) == listed.ByteSize()
    assert value(found, received + "_sum", **listing) == 0  # an empty request is no bytes
    assert value(found, received + "_bucket", le="0", **listing) == 1
    bad = {"grpc_method": generate, "grpc_status": "INVALID_ARGUMENT"}
    assert value(found, received + "_sum", **bad) == refused.ByteSize()
    assert value(found, sent + "_sum", **bad) == 0


def test_no_label_names_a_caller_or_holds_a_prompt_unless_asked(
    metered: ServerUnderTest, connect: Callable[..., PixelgateClient], mint: Callable[..., str]
) -> None:
    """Principals and prompts never reach a label by default."""
    token = mint(subject="alice-the-caller")
    connect(metered, token=token).generate("a secret lighthouse", steps=2)
    text = scrape(metered)
    for leaked in ("alice-the-caller", "secret lighthouse", token):
        assert leaked not in text


def test_principal_labels_are_capped_when_asked_for(
    start_server: Callable[..., ServerUnderTest],
    connect: Callable[..., PixelgateClient],
    mint: Callable[..., str],
) -> None:
    """With principal labels on, the first callers are named and the rest count as other."""
    server = start_server(
        metrics={
            "enabled": True,
            "address": "127.0.0.1:0",
            "principal_labels": True,
            "max_principal_labels": 1,
        }
    )
    for subject in ("first-caller", "second-caller"):
        connect(server, token=mint(subject=subject)).generate("a lighthouse", steps=2)
    found = samples(scrape(server))
    images_total = "pixelgate_images_total"
    labels: dict[str, Any] = {"model": MODEL, "finish_reason": "completed"}
    assert value(found, images_total, **labels, principal="first-caller") == 1
    assert value(found, images_total, **labels, principal="other") == 1
    assert "second-caller" not in scrape(server)


def test_the_endpoint_listens_on_loopback_and_serves_only_metrics(
    metered: ServerUnderTest,
) -> None:
    """Bound to 127.0.0.1 (the default is loopback too); other paths are 404; it closes
    with the server."""
    port = metered.running.metrics_port
    assert port is not None
    assert "pixelgate_queue_capacity" in scrape(metered)
    with pytest.raises(urllib.error.HTTPError) as refused:
        scrape(metered, "/")
    assert refused.value.code == 404
    metered.stop(0)
    time.sleep(0.1)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


class _JwksServer:
    """An issuer's JWKS over loopback HTTP: an empty key set first, then 500s."""

    def __init__(self) -> None:
        self.requests = 0
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the base class names it
                jwks.requests += 1
                if jwks.requests > 1:
                    self.send_error(500)
                    return
                body = json.dumps({"keys": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # `format`: the base's
                return

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.http.server_address[1]}"
        self._thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self._thread.join(5)


def test_jwks_refreshes_are_counted_by_issuer_and_result(
    start_server: Callable[..., ServerUnderTest],
    connect: Callable[..., PixelgateClient],
    signing_key: SigningKey,
    pki: DevPkiFiles,
) -> None:
    """The fetch at start-up counts as ok; one an unknown `kid` triggers, answered 500,
    as failed."""
    jwks = _JwksServer()
    try:
        server = start_server(
            metrics={"enabled": True, "address": "127.0.0.1:0"},
            auth={
                "issuers": [
                    {
                        "issuer": DEV_ISSUER,
                        "audiences": [DEV_AUDIENCE],
                        "public_key_files": [pki.verification_key],
                    },
                    {
                        "issuer": jwks.issuer,
                        "audiences": [DEV_AUDIENCE],
                        "jwks_url": f"{jwks.issuer}/jwks",
                    },
                ]
            },
        )
        token = mint_access_token(
            signing_key, subject="remote", issuer=jwks.issuer, extra_headers={"kid": "new"}
        )
        with pytest.raises(Unauthenticated):
            connect(server, token=token).list_models()
        found = samples(scrape(server))
    finally:
        jwks.close()
    refreshes = "pixelgate_jwks_refreshes_total"
    assert value(found, refreshes, issuer=jwks.issuer, result="ok") == 1
    # Every answer after the first was a 500 (a retried call may trigger more than one).
    assert value(found, refreshes, issuer=jwks.issuer, result="failed") == jwks.requests - 1 >= 1
    assert (
        value(found, "pixelgate_refusals_total", reason="authentication", detail="unknown_key") == 1
    )


def test_metrics_are_off_when_disabled(start_server: Callable[..., ServerUnderTest]) -> None:
    """No listener at all when metrics are off (the test servers' default)."""
    assert start_server().running.metrics_port is None
