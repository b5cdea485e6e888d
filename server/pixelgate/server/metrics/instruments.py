"""The service's instruments and the small functions that record to them.

Pieces report through these methods (the engine's observer, the data plane's, the error
mapping's refusal hook); each is called where the event happens anyway (a batch taken, a
generation ended, a call refused), never on a call that succeeds without generating.
Attribute sets are built once per distinct value and reused.
"""

from __future__ import annotations

from opentelemetry.metrics import Meter
from opentelemetry.util.types import Attributes

from pixelgate.server.core.errors import ServiceError
from pixelgate.server.core.principal import Principal
from pixelgate.server.metrics.principals import PrincipalLabels
from pixelgate.server.metrics.refusals import refusal
from pixelgate.server.rpc.call_record import NoCallRecord, current_record

SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


class ServiceMetrics:
    """Records what the service does: its queue, batches, steps, generations, refusals."""

    def __init__(self, meter: Meter, principals: PrincipalLabels | None = None) -> None:
        self._principals = principals
        self._attributes: dict[tuple[str, ...], Attributes] = {}
        self._queue_wait = meter.create_histogram(
            "pixelgate.queue.wait",
            unit="s",
            description="Time a generation job waited in the queue before a worker took it",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self._batch_size = meter.create_histogram(
            "pixelgate.batch.size",
            unit="{image}",
            description="Images one pipeline call ran (compatible jobs batched together)",
            explicit_bucket_boundaries_advisory=BATCH_BUCKETS,
        )
        self._step_duration = meter.create_histogram(
            "pixelgate.step.duration",
            unit="s",
            description="Seconds per denoising step of a pipeline call",
            explicit_bucket_boundaries_advisory=STEP_BUCKETS,
        )
        self._images = meter.create_counter(
            "pixelgate.images",
            unit="{image}",
            description="Images asked for, by how each finished: completed (sent), filtered"
            " (blocked by a safety check), cancelled or failed (never finished)",
        )
        self._generation_duration = meter.create_histogram(
            "pixelgate.generation.duration",
            unit="s",
            description="Seconds from admission to the last image sent, by outcome",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self._refusals = meter.create_counter(
            "pixelgate.refusals",
            unit="{call}",
            description="Calls refused, by reason (rate_limit, authentication, permission,"
            " validation, memory_guard, admission_deadline, busy, unavailable) and detail",
        )

    def _attrs(self, *pairs: str) -> Attributes:
        # pairs: name, value, name, value, ...; one dict per distinct combination, reused.
        attributes = self._attributes.get(pairs)
        if attributes is None:
            attributes = self._attributes[pairs] = dict(zip(pairs[::2], pairs[1::2], strict=True))
        return attributes

    def _with_principal(self, principal: Principal | None, *pairs: str) -> Attributes:
        if self._principals is None:
            return self._attrs(*pairs)
        return self._attrs(*pairs, "principal", self._principals.label(principal))

    # The engine's observer (worker threads).

    def queue_waited(self, model_id: str, seconds: float) -> None:
        """A worker took a job that waited `seconds` since it was admitted."""
        self._queue_wait.record(seconds, self._attrs("model", model_id))

    def batch_started(self, model_id: str, images: int) -> None:
        """A worker started a pipeline call of `images` images."""
        self._batch_size.record(images, self._attrs("model", model_id))

    def steps_timed(self, model_id: str, seconds_per_step: float) -> None:
        """A pipeline call ended; its denoising took `seconds_per_step` a step."""
        self._step_duration.record(seconds_per_step, self._attrs("model", model_id))

    # The data plane's observer (the loop).

    def generation_ended(
        self,
        model_id: str,
        outcome: str,
        seconds: float,
        images: dict[str, int],
        caller: Principal | None,
    ) -> None:
        """A generation ended (`outcome`: completed, cancelled, failed) after `seconds`;
        `images` counts its images by how each finished."""
        self._generation_duration.record(
            seconds, self._attrs("model", model_id, "outcome", outcome)
        )
        for finish_reason, count in images.items():
            if count:
                self._images.add(
                    count,
                    self._with_principal(caller, "model", model_id, "finish_reason", finish_reason),
                )

    # The error mapping's hook (the loop): refused calls only.

    def refused(self, error: ServiceError) -> None:
        """A call ended with `error`: counted when it is a refusal."""
        found = refusal(error)
        if found is None:
            return
        principal = None
        if self._principals is not None:
            try:
                principal = current_record().principal
            except NoCallRecord:
                principal = None
        self._refusals.add(
            1, self._with_principal(principal, "reason", found.reason, "detail", found.detail)
        )


__all__ = ["BATCH_BUCKETS", "SECONDS_BUCKETS", "STEP_BUCKETS", "ServiceMetrics"]
