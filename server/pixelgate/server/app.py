"""The composition root: the one place that knows every piece and wires them.

Only here are the concrete backends named: the rate-limit bucket store (in
memory or Redis), each issuer's key source (files or a fetched JWKS) and the
audit writer; every other piece takes them through a small protocol.

The interceptor chain's order is written here once. It opens each call's record,
then runs, outermost first, the wrappers: call metrics (gRFC A66 names, when
metrics are on), audit log (sees every call's final status), the call's span
(tracing: the caller's trace context, its trace id in the audit line), error
mapping (exceptions to statuses, nothing internal leaks); then the guards, in
order: the draining gate (closed on shutdown: all but health refused with
pushback), per-peer rate limit (bounds unauthenticated floods), client certificate
allowlist (all but health, when identities are listed), token authentication
(bearer token and its binding to the certificate), authorization (scopes
declared in the proto), per-caller rate limit. Health and reflection need mutual
TLS (the transport requires it of every connection) but no token: the last three
guards skip them.

Then the servicer, which only converts protobuf, hands a generation to the
data plane (GenerationService: validation, caller policy, GPU quota, the
engine's admission, fair batching queue and a worker per device, encoding).
Health says SERVING once the default model is ready, and, where calls fail
closed on a shared Redis, only while Redis answers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from opentelemetry.sdk.trace import SpanProcessor

from pixelgate.server.api.generation_service import GenerationService
from pixelgate.server.api.reflection import DocumentedReflectionServicer, documented_files
from pixelgate.server.api.registration import add_image_service
from pixelgate.server.api.servicer import ImageServicer
from pixelgate.server.api.validation import RequestValidator
from pixelgate.server.audit.interceptor import AuditLog
from pixelgate.server.audit.writer import AuditWriter
from pixelgate.server.core.config import (
    AuthSettings,
    ConfigError,
    ConnectionSettings,
    ModelSettings,
    ProbeSettings,
    RateLimitSettings,
    Settings,
)
from pixelgate.server.core.quota import Limit
from pixelgate.server.engine.engine import WORKER_STOP_SECONDS, GenerationEngine
from pixelgate.server.engine.memory_guard import MemoryGuard
from pixelgate.server.engine.prompt_denylist import PromptDenylist
from pixelgate.server.limits.backend_probe import BackendProbe, ServingHealth
from pixelgate.server.limits.buckets import Limiter, MemoryBackend, RateLimitBackend
from pixelgate.server.limits.caller_policy import CallerPolicy
from pixelgate.server.limits.gpu_quota import CostModel, GpuQuota
from pixelgate.server.limits.guards import (
    CallerRateLimit,
    PeerRateLimit,
)
from pixelgate.server.limits.redis_backend import RedisBackend
from pixelgate.server.metrics.server_metrics import ServerMetrics, build_server_metrics
from pixelgate.server.metrics.state_gauges import (
    KeyRefreshView,
    observe_certificates,
    observe_device_memory,
    observe_key_refreshes,
    observe_models,
    observe_queue,
)
from pixelgate.server.models.device import DeviceMemory, memory_budget
from pixelgate.server.models.registry import ModelRegistry, engine_devices
from pixelgate.server.models.runtime import ModelLoader, ModelRuntime, load_model
from pixelgate.server.models.safety import output_checker
from pixelgate.server.rpc.draining_gate import DrainingGate
from pixelgate.server.rpc.error_mapping import ErrorMapping
from pixelgate.server.rpc.interception import InterceptorChain, every_method
from pixelgate.server.security.authentication import CertificateAllowlist, TokenAuthentication
from pixelgate.server.security.authorization import ScopeAuthorization, ScopePolicy
from pixelgate.server.security.certificate_reloader import CertificateReloader
from pixelgate.server.security.client_identity import BindingPolicy
from pixelgate.server.security.key_sources import RemoteJwks, key_source
from pixelgate.server.security.token_keys import UnusableKeyError
from pixelgate.server.security.token_verifier import TokenVerifier, TrustedIssuer
from pixelgate.server.tracing.provider import build_tracing
from pixelgate.v1 import image_service_pb2 as pb

log = logging.getLogger("pixelgate.server")

IMAGE_SERVICE = pb.DESCRIPTOR.services_by_name["ImageService"]
SERVICE_NAME: str = IMAGE_SERVICE.full_name

TOKENLESS_SERVICES: tuple[str, ...] = (health.SERVICE_NAME, reflection.SERVICE_NAME)
"""Services that need mutual TLS but no access token: the explicit exception list."""

DEFAULT_MODEL_READY = "default model ready"
"""A condition of SERVING: the default model is warm (or loads on first use)."""
RATE_LIMITS_ANSWER = "rate-limit backend answers"
"""A condition of SERVING, watched only while calls fail closed on a shared Redis."""

DRAIN_NOTICE_SECONDS = 0.5
"""From health turning NOT_SERVING on shutdown to the port closing (taken from the grace):
the NOT_SERVING reaches clients that watch health, and a call that still arrives is served,
or, a generation, refused with pushback, which gRPC retries on another replica."""

MAX_REQUEST_BYTES = 64 * 1024
"""Largest request message accepted; a GenerateImageRequest within bounds is far smaller."""

Closer = Callable[[], Awaitable[None]]


def needs_token(method: str) -> bool:
    """True for every method outside the token-less services."""
    return not any(method.startswith(f"/{service}/") for service in TOKENLESS_SERVICES)


def not_health(method: str) -> bool:
    """True for every method but the health checks (load balancers probe them)."""
    return not method.startswith(f"/{health.SERVICE_NAME}/")


def generates(method: str) -> bool:
    """True for the generation: the one call whose stages are worth a span each."""
    return method == f"/{SERVICE_NAME}/GenerateImage"


async def build_verifier(
    auth: AuthSettings, fetched: dict[str, KeyRefreshView] | None = None
) -> tuple[TokenVerifier, list[Closer]]:
    """Loads (or starts fetching) every issuer's keys; a bad key file stops start-up.

    `fetched`, if given, receives each issuer's fetched key source (for metrics).
    """
    issuers: list[TrustedIssuer] = []
    closers: list[Closer] = []
    for settings in auth.issuers:
        try:
            source = key_source(settings)
        except UnusableKeyError as error:
            raise ConfigError(f"issuer {settings.issuer}: {error}") from None
        await source.start()
        closers.append(source.aclose)
        if fetched is not None and isinstance(source, RemoteJwks):
            fetched[settings.issuer] = source
        issuers.append(TrustedIssuer(settings.issuer, settings.audiences, source))
    verifier = TokenVerifier(
        issuers,
        leeway_seconds=auth.leeway_seconds,
        token_types=auth.token_types,
        cache_size=auth.verified_token_cache_size,
    )
    return verifier, closers


def build_limiter(settings: RateLimitSettings) -> Limiter:
    """The bucket store the settings ask for, failing closed or open as configured."""
    backend: RateLimitBackend
    if settings.backend == "redis":
        backend = RedisBackend.from_url(
            settings.redis_url,
            key_prefix=settings.redis_key_prefix,
            timeout_seconds=settings.redis_timeout_seconds,
            slot_lease_seconds=settings.slot_lease_seconds,
        )
    else:
        backend = MemoryBackend()
    return Limiter(backend, fail_open=settings.on_backend_failure == "fail_open")


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def connection_options(settings: ConnectionSettings) -> list[tuple[str, int]]:
    """grpc server options bounding each connection's handshake, silence, idleness, age
    and streams (names from grpc core's channel_arg_names.h)."""
    keepalive_timeout = _milliseconds(settings.keepalive_timeout_seconds)
    return [
        ("grpc.server_handshake_timeout_ms", _milliseconds(settings.handshake_timeout_seconds)),
        ("grpc.keepalive_time_ms", _milliseconds(settings.keepalive_time_seconds)),
        ("grpc.keepalive_timeout_ms", keepalive_timeout),
        # grpc core waits for a keepalive ping's ack this long (default one minute),
        # whatever keepalive_timeout_ms says: without it an unanswered ping stays open.
        ("grpc.http2.ping_timeout_ms", keepalive_timeout),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            _milliseconds(settings.min_client_ping_interval_seconds),
        ),
        ("grpc.keepalive_permit_without_calls", int(settings.keepalive_without_calls)),
        ("grpc.max_connection_idle_ms", _milliseconds(settings.max_idle_seconds)),
        ("grpc.max_connection_age_ms", _milliseconds(settings.max_age_seconds)),
        # 0 is a valid grace: calls in flight are cut as soon as the age is reached.
        ("grpc.max_connection_age_grace_ms", round(settings.max_age_grace_seconds * 1000)),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
    ]


def _per_minute(name: str, capacity: float, per_minute: float) -> Limit:
    return Limit(name=name, capacity=capacity, per_second=per_minute / 60.0)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def probe_listener(
    settings: ProbeSettings,
    health_servicer: health.aio.HealthServicer,  # type: ignore[name-defined]
) -> tuple[grpc.aio.Server, int] | None:
    """A bound (not started) plaintext server with only the health service, sharing the
    main server's health, for Kubernetes' gRPC probes, which cannot present a client
    certificate; None when no address is configured. No reflection, no other service."""
    if settings.address is None:
        return None
    probe = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, probe)
    try:
        port = probe.add_insecure_port(settings.address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise ConfigError(f"cannot listen for probes on {settings.address}")
    return probe, port


@dataclass
class RunningServer:
    """A started server: where it listens and the handles needed to stop it."""

    server: grpc.aio.Server
    port: int
    engine: GenerationEngine
    health: health.aio.HealthServicer  # type: ignore[name-defined]
    certificates: CertificateReloader | None = None
    """Re-reads the TLS files; `reload()` on SIGHUP."""
    closers: list[Closer] = field(default_factory=list)
    background: list[asyncio.Task[None]] = field(default_factory=list)
    probe: grpc.aio.Server | None = None
    """The plaintext health-only listener for Kubernetes probes, when configured."""
    probe_port: int | None = None
    """Where `probe` listens."""
    metrics_port: int | None = None
    draining: DrainingGate | None = None
    """Closed as the server stops: every call but health is then refused with pushback."""
    """Where `/metrics` listens, when metrics are on."""

    async def stop(self, grace: float | None) -> None:
        """Health goes NOT_SERVING, new calls are refused, in-flight calls get `grace` seconds;
        the probe listener closes last, so probes see NOT_SERVING while the rest drains.

        Jobs still waiting in the queue do not wait out the grace: they end at once with
        ReplicaBusy (UNAVAILABLE with `grpc-retry-pushback-ms`). A caller already sent its
        queue position (or the quota headers) is past gRPC's transparent retry, which
        stops at the first response: it sees the status and may retry it itself.
        """
        stopping = time.monotonic()
        for task in self.background:
            task.cancel()
        await self.health.enter_graceful_shutdown()
        if self.draining is not None:
            self.draining.close()  # new calls (health aside) go to another replica
        self.engine.drain()  # no new jobs; waiting ones go elsewhere; running ones finish
        # Keep serving a moment: clients watching health stop sending here first. A call
        # that reaches the port as it stops is cut off CANCELLED, which no client retries.
        notice = DRAIN_NOTICE_SECONDS if grace is None else min(DRAIN_NOTICE_SECONDS, grace)
        await asyncio.sleep(notice)
        await self.server.stop(None if grace is None else grace - notice)
        # The workers get what is left of the grace (a model still loading is abandoned:
        # a load cannot be interrupted), and at least a moment to finish their step.
        left = None if grace is None else grace - (time.monotonic() - stopping)
        await self.engine.aclose(WORKER_STOP_SECONDS if left is None else max(left, 1.0))
        for close in self.closers:  # each one, whatever the others do (the audit is last)
            try:
                await close()
            except Exception:
                log.exception("a component failed to close")
        if self.probe is not None:
            await self.probe.stop(None)


def _observe_state(
    metrics: ServerMetrics,
    settings: Settings,
    engine: GenerationEngine,
    registry: ModelRegistry,
    certificates: CertificateReloader,
    devices: list[str],
    fetched_keys: dict[str, KeyRefreshView],
) -> None:
    """The state `/metrics` reads as it is scraped: nothing of it costs a call anything."""
    meter = metrics.meter
    observe_queue(meter, engine, settings.engine.max_queued_jobs, list(registry))
    observe_models(
        meter, lambda: [(model.id, model.state.name.lower()) for model in registry.values()]
    )
    observe_device_memory(meter, DeviceMemory(), devices)
    observe_certificates(meter, certificates)
    observe_key_refreshes(meter, fetched_keys)


async def start_server(
    settings: Settings,
    *,
    loader: ModelLoader | None = None,
    interceptors: bool = True,
    span_processors: Sequence[SpanProcessor] = (),
) -> RunningServer:
    """Builds every piece from `settings`, starts serving, and returns once the default
    model is ready (or has failed; then health stays NOT_SERVING and the rest serve).

    `loader` replaces how models load (tests share one loaded tiny model).
    `span_processors` also receive the server's spans (tests: an in-memory exporter).
    `interceptors=False` serves with no chain at all (mutual TLS still on):
    only for measuring what the chain costs; it is not reachable from settings.
    """
    certificates = CertificateReloader(settings.tls)
    devices = engine_devices(settings.engine)
    metrics = build_server_metrics(settings.metrics) if settings.metrics.enabled else None
    registry = await asyncio.to_thread(
        ModelRegistry.from_settings,
        settings.models,
        settings.default_model_id,
        devices,
        settings.cache_dir,
    )
    caller_policy = CallerPolicy(settings.policy.rules)
    caller_policy.check_models_exist(registry)
    fetched_keys: dict[str, KeyRefreshView] = {}
    verifier, closers = await build_verifier(settings.auth, fetched_keys)
    limits = settings.rate_limit
    limiter = build_limiter(limits)
    closers.append(limiter.backend.aclose)
    safety = settings.safety
    engine = GenerationEngine(
        registry,
        devices,
        settings=settings.engine,
        loader=loader or functools.partial(_load_model, cache_dir=settings.cache_dir),
        memory=MemoryGuard(memory_budget(settings.engine, devices)),
        denylist=PromptDenylist.from_settings(safety.prompt_denylist, safety.prompt_denylist_file),
        checker_factory=functools.partial(
            output_checker, safety.output_checker, safety.checker_source
        ),
        observer=metrics.service if metrics else None,
    )
    auth = settings.auth
    binding = BindingPolicy(
        require_bound_tokens=auth.require_bound_tokens,
        certificate_must_match=auth.certificate_must_match,
        allowed_identities=auth.allowed_client_identities,
    )
    try:
        audit = AuditWriter(settings.audit.destination)
    except OSError as error:
        raise ConfigError(
            f"cannot open audit destination {settings.audit.destination}: {error.strerror}"
        ) from None
    closers.append(lambda: asyncio.to_thread(audit.close))
    tracing = build_tracing(settings.tracing, span_processors)
    closers.insert(-1, tracing.aclose)  # spans flushed before the audit closes, last
    draining = DrainingGate(applies_to=not_health)
    chain = InterceptorChain(
        # Call metrics outermost: they see the status the caller sees. The call's span
        # inside the audit wrapper: the audit line carries its trace id. Refusals are
        # counted as the error mapping turns them into statuses (a success pays nothing).
        wrappers=[
            *([metrics.calls] if metrics else []),
            AuditLog(audit),
            *tracing.wrappers(),
            ErrorMapping(metrics.service.refused if metrics else None),
        ],
        guards=[
            # Closed as draining begins: nothing but health is served from then on.
            draining,
            PeerRateLimit(
                # In this process, whatever the backend: a flood guard must not
                # depend on Redis (health checks included) nor cost a round trip.
                Limiter(MemoryBackend()),
                _per_minute("peer", limits.peer_burst, limits.peer_requests_per_minute),
                applies_to=every_method,
            ),
            *(
                [CertificateAllowlist(binding, applies_to=not_health)]
                if auth.allowed_client_identities
                else []
            ),
            tracing.spanned(
                TokenAuthentication(verifier, binding, applies_to=needs_token),
                "authentication",
                where=generates,
            ),
            ScopeAuthorization(ScopePolicy.from_services([IMAGE_SERVICE]), applies_to=needs_token),
            CallerRateLimit(
                limiter,
                _per_minute("requests", limits.burst, limits.requests_per_minute),
                applies_to=needs_token,
            ),
        ],
    )
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ("grpc.so_reuseport", 0),  # a busy port is an error, not a shared one
            *connection_options(settings.connections),
        ],
    )
    generations = GenerationService(
        engine,
        RequestValidator(
            registry,
            registry.default_model,
            max_prompt_bytes=settings.max_prompt_bytes,
            max_images=settings.max_images_per_request,
            output=settings.output,
        ),
        caller_policy,
        GpuQuota(
            limiter,
            _per_minute("gpu", limits.gpu_cost_burst, limits.gpu_cost_per_minute),
            CostModel({model.id: model.cost_factor for model in settings.models}),
            max_concurrent=limits.max_concurrent_generations,
        ),
        chunk_size=settings.chunk_size,
        observer=metrics.service if metrics else None,
    )
    servicer = ImageServicer(
        generations, registry, stall_timeout=settings.stream_stall_timeout_seconds
    )
    # Every service registers through the chain, which wraps its handlers once.
    services = chain.serving(server) if interceptors else server
    add_image_service(servicer, services)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, services)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        DocumentedReflectionServicer((SERVICE_NAME, *TOKENLESS_SERVICES), documented_files()),
        services,
    )

    port = server.add_secure_port(
        _address(settings.host, settings.port), certificates.credentials()
    )
    if port == 0:
        raise ConfigError(f"cannot listen on {_address(settings.host, settings.port)}")
    probe_server, probe_port = probe_listener(settings.probes, health_servicer) or (None, None)
    if metrics is not None:
        _observe_state(metrics, settings, engine, registry, certificates, devices, fetched_keys)
        try:
            metrics.start(settings.metrics.address)
        except OSError as error:
            raise ConfigError(
                f"cannot serve metrics on {settings.metrics.address}: {error.strerror}"
            ) from None
        closers.insert(0, metrics.aclose)
        log.info("metrics on port %d (plaintext, /metrics)", metrics.port)
    health_gate = ServingHealth(
        health_servicer, ("", SERVICE_NAME), (DEFAULT_MODEL_READY, RATE_LIMITS_ANSWER)
    )
    await health_gate.set(RATE_LIMITS_ANSWER, True)  # NOT_SERVING: no model yet
    await server.start()
    if probe_server is not None:
        await probe_server.start()
        log.info("health probes on port %d (plaintext, health only)", probe_port)
    await engine.start()
    running = RunningServer(
        server=server,
        port=port,
        engine=engine,
        health=health_servicer,
        certificates=certificates,
        closers=closers,
        probe=probe_server,
        probe_port=probe_port,
        metrics_port=metrics.port if metrics else None,
        draining=draining,
    )
    if limits.backend == "redis" and limits.on_backend_failure == "fail_closed":
        # Every tokened call fails while the shared buckets are out of reach: say so,
        # and load balancers send the calls to a replica that can take them.
        probe = BackendProbe(
            limiter.backend,
            interval_seconds=limits.redis_probe_interval_seconds,
            on_change=functools.partial(health_gate.set, RATE_LIMITS_ANSWER),
        )
        limiter.observer = probe
        running.background.append(asyncio.create_task(probe.run()))
    log.info(
        "pixelgate listening on %s (mutual TLS); loading models", _address(settings.host, port)
    )
    default = registry.default_model

    async def serving_once_ready() -> None:
        await registry.wait_ready(default)
        await health_gate.set(DEFAULT_MODEL_READY, True)
        log.info("default model %s ready", default)

    if not registry[default].settings.preload:  # loads on first use: nothing to wait for
        await health_gate.set(DEFAULT_MODEL_READY, True)
        return running
    # Health turns SERVING whenever the default model becomes ready, on any worker.
    serving = asyncio.create_task(serving_once_ready())
    if await registry.wait_settled(default):
        await serving
    else:
        log.error("default model %s failed to load: health stays NOT_SERVING", default)
        running.background.append(serving)
    return running


def _load_model(settings: ModelSettings, device: str, *, cache_dir: Path) -> ModelRuntime:
    return load_model(settings, device, cache_dir)


__all__ = [
    "IMAGE_SERVICE",
    "SERVICE_NAME",
    "TOKENLESS_SERVICES",
    "RunningServer",
    "build_limiter",
    "build_verifier",
    "connection_options",
    "needs_token",
    "probe_listener",
    "start_server",
]
