"""State read at scrape time, rendered as Prometheus shows it (a real provider and registry)."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pixelgate.server.metrics.provider import MeterSetup, build_meter_provider
from pixelgate.server.metrics.state_gauges import (
    observe_certificates,
    observe_device_memory,
    observe_key_refreshes,
    observe_models,
    observe_queue,
)
from pixelgate.server.models.device import DeviceMemory


def _scrape(setup: MeterSetup) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(setup.registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


class FakeCuda:
    """torch.cuda as DeviceMemory reads it: 3 MiB allocated on every GPU."""

    def memory_allocated(self, device: str) -> int:
        return 3 * 1024 * 1024


@dataclass
class FakeEngine:
    active_jobs: int
    depths: Mapping[str, int]

    def queue_depths(self) -> Mapping[str, int]:
        return self.depths


@dataclass
class FakeKeys:
    refreshes: int
    refresh_failures: int


def _certificate(days: int) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    start = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )


@dataclass
class FakeMaterial:
    certificate: x509.Certificate
    client_cas: tuple[x509.Certificate, ...]


@dataclass
class FakeReloader:
    material: Any
    rejected_reloads: int


def test_device_memory_is_shown_for_gpus_and_not_for_the_cpu() -> None:
    """torch's allocated bytes per CUDA device; the CPU has no series (nothing measured)."""
    setup = build_meter_provider()
    observe_device_memory(
        setup.provider.get_meter("t"), DeviceMemory(FakeCuda()), ["cuda:0", "cpu"]
    )
    found = _scrape(setup)
    assert found[_key("pixelgate_device_memory_used_bytes", device="cuda:0")] == 3 * 1024 * 1024
    assert not any(labels == frozenset({("device", "cpu")}) for _, labels in found)


def test_queue_depth_shows_every_model_and_the_capacity() -> None:
    """A model with nothing waiting shows 0 rather than vanishing."""
    setup = build_meter_provider()
    engine = FakeEngine(active_jobs=5, depths={"a": 3})
    observe_queue(setup.provider.get_meter("t"), engine, 32, ["a", "b"])
    found = _scrape(setup)
    assert found[_key("pixelgate_queue_depth", model="a")] == 3
    assert found[_key("pixelgate_queue_depth", model="b")] == 0
    assert found[_key("pixelgate_queue_active")] == 5
    assert found[_key("pixelgate_queue_capacity")] == 32


def test_model_state_is_one_for_the_current_state_only() -> None:
    """Each model has a series per state; the current one is 1."""
    setup = build_meter_provider()
    observe_models(setup.provider.get_meter("t"), lambda: [("a", "failed"), ("b", "ready")])
    found = _scrape(setup)
    assert found[_key("pixelgate_model_state", model="a", state="failed")] == 1
    assert found[_key("pixelgate_model_state", model="a", state="ready")] == 0
    assert found[_key("pixelgate_model_state", model="b", state="ready")] == 1


def test_certificate_expiry_shows_the_served_one_and_the_earliest_client_ca() -> None:
    """Unix times of expiry; the reload failures as a counter."""
    served, early_ca, late_ca = _certificate(30), _certificate(10), _certificate(400)
    setup = build_meter_provider()
    reloader = FakeReloader(FakeMaterial(served, (late_ca, early_ca)), rejected_reloads=2)
    observe_certificates(setup.provider.get_meter("t"), reloader)
    found = _scrape(setup)
    expiry = "pixelgate_certificate_expiry_seconds"
    assert found[_key(expiry, certificate="served")] == served.not_valid_after_utc.timestamp()
    assert found[_key(expiry, certificate="client_ca")] == early_ca.not_valid_after_utc.timestamp()
    assert found[_key("pixelgate_certificate_reload_failures_total")] == 2


def test_jwks_refreshes_are_counted_by_issuer_and_result() -> None:
    """ok = attempted - failed."""
    setup = build_meter_provider()
    observe_key_refreshes(setup.provider.get_meter("t"), {"https://i": FakeKeys(5, 2)})
    found = _scrape(setup)
    refreshes = "pixelgate_jwks_refreshes_total"
    assert found[_key(refreshes, issuer="https://i", result="ok")] == 3
    assert found[_key(refreshes, issuer="https://i", result="failed")] == 2
