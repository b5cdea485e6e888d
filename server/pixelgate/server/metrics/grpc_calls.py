"""gRPC server call metrics under gRFC A66's names: calls started per method; call
duration and the bytes of its messages each way, per method and status.

grpcio-observability's OpenTelemetry plugin is the standard source of these, but no
release can serve a grpc.aio server. Up to 1.80.0 it records nothing for grpc.aio (no
server call tracer is installed). From 1.81.0, the first to trace aio calls, to 1.85.0,
the newest, a grpc.aio server with the plugin registered hangs within a second under
load, one caller enough, with or without TLS, on grpcio 1.85.3 too: the event loop
thread waits for the plugin's census buffer mutex while holding the GIL, and the
plugin's export thread holds that mutex while it waits for the GIL (gdb and py-spy
stacks of a 30-line reproduction). That is a lock-order inversion of its own, not the
client-side plugin lock of grpc/grpc#43079, whose proposed fix would not cure it. Until
a release does, this wrapper records the same instruments under the same names and
attributes, and the plugin can replace this file without changing a dashboard.
The byte sizes are the messages' as serialized (the chain
serializes responses and is handed raw requests): A66's "compressed" sizes, since this
server compresses nothing, except for a request a caller compressed, counted here as
grpcio hands it over, decompressed.

The wrapper is outermost in the chain, so the status is the one the caller sees. Only
methods some service registered reach the chain (gRPC answers the rest UNIMPLEMENTED
itself), so `grpc.method` is bounded. It runs on every call, so it does little: the
started count is a plain integer per method that an observable counter reads as
Prometheus scrapes, and the duration goes to a CallHistogram in the same registry
(call_histogram.py: the SDK's own histogram was the chain's costliest step).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import grpc.aio
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from prometheus_client import CollectorRegistry

from pixelgate.server.metrics.call_histogram import CallHistogram
from pixelgate.server.rpc.call_record import CallRecord, current_record
from pixelgate.server.rpc.call_status import call_status
from pixelgate.server.rpc.interception import CallWrapper

# gRFC A66's default latency buckets, in seconds.
DURATION_BUCKETS = (
    0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004,
    0.005, 0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08,
    0.1, 0.13, 0.16, 0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1, 2, 5, 10, 20, 50, 100,
)  # fmt: skip

# gRFC A66's default size buckets, in bytes.
SIZE_BUCKETS = (
    0, 1024, 2048, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
    268435456, 1073741824, 4294967296,
)  # fmt: skip


class CallMetrics(CallWrapper):
    """Counts each call as it starts; times it and sizes its messages, with its final
    status, as it ends."""

    def __init__(self, meter: Meter, registry: CollectorRegistry) -> None:
        self._started: dict[str, int] = {}
        """Calls started per method (the loop adds; the scrape thread reads)."""
        meter.create_observable_counter(
            "grpc.server.call.started",
            [self._observe_started],
            unit="{call}",
            description="Number of server calls started (gRFC A66)",
        )
        # A66's grpc.server.call.duration, named as the OpenTelemetry exporter names it.
        self._duration = CallHistogram(
            "grpc_server_call_duration_seconds",
            "End-to-end time taken to complete a call from server transport's"
            " perspective (gRFC A66)",
            labels=("grpc_method", "grpc_status"),
            buckets=DURATION_BUCKETS,
        )
        # A66's grpc.server.call.{sent,rcvd}_total_compressed_message_size, in bytes.
        self._sent = CallHistogram(
            "grpc_server_call_sent_total_compressed_message_size_bytes",
            "Total bytes (compressed but not encrypted) sent across all response messages"
            " (metadata excluded) per RPC (gRFC A66)",
            labels=("grpc_method", "grpc_status"),
            buckets=SIZE_BUCKETS,
        )
        self._received = CallHistogram(
            "grpc_server_call_rcvd_total_compressed_message_size_bytes",
            "Total bytes (compressed but not encrypted) received across all request messages"
            " (metadata excluded) per RPC (gRFC A66)",
            labels=("grpc_method", "grpc_status"),
            buckets=SIZE_BUCKETS,
        )
        for histogram in (self._duration, self._sent, self._received):
            registry.register(histogram)
        self._labels: dict[tuple[str, str], tuple[str, str]] = {}

    def _observe_started(self, options: CallbackOptions) -> Iterable[Observation]:
        # A66 names the method without its leading slash.
        return [
            Observation(count, {"grpc.method": method[1:]})
            for method, count in list(self._started.items())  # one step under the GIL
        ]

    def enter(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> CallRecord:
        started = self._started
        started[method] = started.get(method, 0) + 1
        return current_record()  # opened by the chain as the call started

    def exit(
        self,
        state: CallRecord,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        error: BaseException | None,
    ) -> None:
        status = call_status(context, error).name
        key = (method, status)
        labels = self._labels.get(key)
        if labels is None:  # A66 names the method without its leading slash
            labels = self._labels[key] = (method[1:], status)
        self._duration.observe(labels, time.perf_counter() - state.started)
        self._sent.observe(labels, state.sent_bytes)
        self._received.observe(labels, state.received_bytes)


__all__ = ["DURATION_BUCKETS", "SIZE_BUCKETS", "CallMetrics"]
