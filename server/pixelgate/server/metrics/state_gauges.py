"""State read when Prometheus scrapes, through observable instruments: the queue, each
model's state, device memory, the certificates in service, key refreshes.

Nothing here runs on a call: each callback reads what its piece already keeps, once per
scrape. The pieces are reached through the small protocols below, not imported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from cryptography import x509
from opentelemetry.metrics import CallbackOptions, Meter, Observation


class QueueView(Protocol):
    """What the engine tells of its queue."""

    @property
    def active_jobs(self) -> int:
        """Jobs waiting or running."""
        ...

    def queue_depths(self) -> Mapping[str, int]:
        """Waiting jobs by model."""
        ...


class DeviceMemoryView(Protocol):
    """Memory a device's allocator holds, where torch can tell."""

    def allocated_bytes(self, device: str) -> int | None:
        """Bytes allocated on `device`; None where it is not measured (the CPU)."""
        ...


class TlsMaterialView(Protocol):
    """The certificates in service."""

    @property
    def certificate(self) -> x509.Certificate:
        """The served (leaf) certificate."""
        ...

    @property
    def client_cas(self) -> tuple[x509.Certificate, ...]:
        """The CAs client certificates must chain to."""
        ...


class CertificateView(Protocol):
    """The certificate reloader: the material in service, and refused reloads."""

    @property
    def material(self) -> TlsMaterialView:
        """The material new handshakes get."""
        ...

    @property
    def rejected_reloads(self) -> int:
        """File sets refused since start."""
        ...


class KeyRefreshView(Protocol):
    """A key source fetched from an issuer: its refreshes so far."""

    @property
    def refreshes(self) -> int:
        """Refreshes attempted."""
        ...

    @property
    def refresh_failures(self) -> int:
        """Refreshes that failed (the last good keys stayed)."""
        ...


MODEL_STATES = ("not_loaded", "loading", "ready", "failed")


def observe_queue(meter: Meter, engine: QueueView, capacity: int, model_ids: Sequence[str]) -> None:
    """Queue depth per model, jobs waiting or running, and the cap on them."""

    def depths(options: CallbackOptions) -> Iterable[Observation]:
        found = engine.queue_depths()
        # Every configured model, 0 included: a series that vanishes cannot be alerted on.
        return [Observation(found.get(model, 0), {"model": model}) for model in model_ids]

    meter.create_observable_gauge(
        "pixelgate.queue.depth",
        [depths],
        unit="{job}",
        description="Generation jobs waiting for a worker, by model",
    )
    meter.create_observable_gauge(
        "pixelgate.queue.active",
        [lambda options: [Observation(engine.active_jobs)]],
        unit="{job}",
        description="Generation jobs waiting or running (at most pixelgate_queue_capacity)",
    )
    meter.create_observable_gauge(
        "pixelgate.queue.capacity",
        [lambda options: [Observation(capacity)]],
        unit="{job}",
        description="Generation jobs the engine takes at once (engine.max_queued_jobs)",
    )


def observe_models(meter: Meter, states: Callable[[], Iterable[tuple[str, str]]]) -> None:
    """1 for each model's current state, 0 for the others; `states` gives (model id, state)."""

    def observe(options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(int(current == state), {"model": model, "state": state})
            for model, current in states()
            for state in MODEL_STATES
        ]

    meter.create_observable_gauge(
        "pixelgate.model.state",
        [observe],
        description="1 for the state each model is in (not_loaded, loading, ready, failed)",
    )


def observe_device_memory(meter: Meter, memory: DeviceMemoryView, devices: Sequence[str]) -> None:
    """Bytes allocated on each device torch measures (CUDA); nothing for the CPU."""

    def allocated(options: CallbackOptions) -> Iterable[Observation]:
        found = ((device, memory.allocated_bytes(device)) for device in devices)
        return [Observation(used, {"device": device}) for device, used in found if used is not None]

    meter.create_observable_gauge(
        "pixelgate.device.memory.used",
        [allocated],
        unit="By",
        description="Device memory allocated by tensors (torch.cuda.memory_allocated)",
    )


def observe_certificates(meter: Meter, certificates: CertificateView) -> None:
    """When the served certificate and the earliest client CA expire; refused reloads."""

    def expiry(options: CallbackOptions) -> Iterable[Observation]:
        material = certificates.material
        observations = [
            Observation(
                material.certificate.not_valid_after_utc.timestamp(), {"certificate": "served"}
            )
        ]
        if material.client_cas:
            earliest = min(ca.not_valid_after_utc.timestamp() for ca in material.client_cas)
            observations.append(Observation(earliest, {"certificate": "client_ca"}))
        return observations

    meter.create_observable_gauge(
        "pixelgate.certificate.expiry",
        [expiry],
        unit="s",
        description="Unix time the certificate in service expires (served; client_ca: the"
        " earliest of the client CA bundle)",
    )
    meter.create_observable_counter(
        "pixelgate.certificate.reload_failures",
        [lambda options: [Observation(certificates.rejected_reloads)]],
        unit="{reload}",
        description="TLS file sets refused (did not parse, or key and certificate differ);"
        " the previous set stayed in service",
    )


def observe_key_refreshes(meter: Meter, sources: Mapping[str, KeyRefreshView]) -> None:
    """JWKS refreshes by issuer, and how many failed."""

    def refreshes(options: CallbackOptions) -> Iterable[Observation]:
        return [
            observation
            for issuer, source in sources.items()
            for observation in (
                Observation(
                    source.refreshes - source.refresh_failures, {"issuer": issuer, "result": "ok"}
                ),
                Observation(source.refresh_failures, {"issuer": issuer, "result": "failed"}),
            )
        ]

    meter.create_observable_counter(
        "pixelgate.jwks.refreshes",
        [refreshes],
        unit="{refresh}",
        description="JWKS fetches from each issuer, by result (failed: the last good keys stayed)",
    )


__all__ = [
    "MODEL_STATES",
    "CertificateView",
    "DeviceMemoryView",
    "KeyRefreshView",
    "QueueView",
    "TlsMaterialView",
    "observe_certificates",
    "observe_device_memory",
    "observe_key_refreshes",
    "observe_models",
    "observe_queue",
]
