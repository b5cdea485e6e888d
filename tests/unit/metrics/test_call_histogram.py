"""The call histogram scrapes exactly as the OpenTelemetry histogram it stands in for."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pixelgate.server.metrics.call_histogram import CallHistogram
from pixelgate.server.metrics.grpc_calls import DURATION_BUCKETS
from pixelgate.server.metrics.provider import build_meter_provider

NAME = "grpc_server_call_duration_seconds"
HELP = "End-to-end time"
VALUES = [0.0, 0.00001, 0.0004, 0.003, 0.003, 0.7, 12.0, 250.0]  # bounds, between, past the last


def _series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {
        (sample.name, tuple(sorted(sample.labels.items())), round(sample.value, 12))
        for family in text_string_to_metric_families(text)
        if family.name == NAME
        for sample in family.samples
    }


def test_a_scrape_matches_the_opentelemetry_histogram() -> None:
    setup = build_meter_provider()
    otel = setup.provider.get_meter("test").create_histogram(
        "grpc.server.call.duration",
        unit="s",
        description=HELP,
        explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
    )
    registry = CollectorRegistry()
    ours = CallHistogram(NAME, HELP, ("grpc_method", "grpc_status"), DURATION_BUCKETS)
    registry.register(ours)
    for index, value in enumerate(VALUES):
        status = "OK" if index % 3 else "UNAVAILABLE"
        otel.record(value, {"grpc.method": "pkg.S/M", "grpc.status": status})
        ours.observe(("pkg.S/M", status), value)

    expected = _series(generate_latest(setup.registry).decode())
    found = _series(generate_latest(registry).decode())
    setup.shutdown()
    assert found == expected
    assert (NAME + "_count", (("grpc_method", "pkg.S/M"), ("grpc_status", "OK")), 5.0) in found
    assert (
        NAME + "_bucket",
        (("grpc_method", "pkg.S/M"), ("grpc_status", "OK"), ("le", "0.003")),
        3.0,  # 1e-05 (UNAVAILABLE's) is not here; 0.0004 and both 0.003 are: `le` includes
    ) in found


def test_scrapes_during_recording_always_add_up() -> None:
    registry = CollectorRegistry()
    histogram = CallHistogram(NAME, HELP, ("grpc_method",), (0.1, 1.0))
    registry.register(histogram)
    done = threading.Event()

    def record() -> None:
        while not done.is_set():
            histogram.observe(("m",), 0.5)

    writer = threading.Thread(target=record)
    writer.start()
    try:
        for _ in range(200):
            samples = {
                (s.name, s.labels.get("le")): s.value
                for family in text_string_to_metric_families(generate_latest(registry).decode())
                for s in family.samples
            }
            assert samples[(NAME + "_count", None)] == samples[(NAME + "_bucket", "+Inf")]
            assert samples[(NAME + "_bucket", "0.1")] == 0
    finally:
        done.set()
        writer.join()


def test_buckets_must_increase() -> None:
    with pytest.raises(ValueError, match="increasing"):
        CallHistogram(NAME, HELP, ("m",), (1.0, 0.5))
