"""The composition root: the one place that knows every piece and wires them.

The interceptor chain's order is written here once. Outermost first, the
wrappers: audit log (sees every call's final status), error mapping
(exceptions to statuses, nothing internal leaks); then the guards, in order:
per-peer rate limit (bounds unauthenticated floods), authentication (client
certificate allowlist (all but health), authentication (bearer token and
its binding to the certificate), authorization (scopes declared in the
proto), per-caller rate limit;

then the servicer, which validates, applies per-caller policy and GPU quota,
and runs the engine. Health and reflection need mutual TLS (the transport
requires it of every connection) but no token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from pixelgate.server.audit_log import AuditLog
from pixelgate.server.authentication import CertificateAllowlist, TokenAuthentication
from pixelgate.server.authorization import ScopeAuthorization, ScopePolicy
from pixelgate.server.caller_policy import CallerPolicy
from pixelgate.server.client_identity import BindingPolicy
from pixelgate.server.config import AuthSettings, ConfigError, RateLimitSettings, Settings
from pixelgate.server.engine import GenerationEngine
from pixelgate.server.error_mapping import ErrorMapping
from pixelgate.server.gpu_quota import CostModel, GpuQuota
from pixelgate.server.interception import InterceptorChain, every_method
from pixelgate.server.key_sources import key_source
from pixelgate.server.models import LoadedModel, load_model
from pixelgate.server.rate_limit import Limit, Limiter, MemoryBackend, RateLimitBackend
from pixelgate.server.rate_limit_guards import (
    CallerRateLimit,
    PeerRateLimit,
)
from pixelgate.server.redis_rate_limit import RedisBackend
from pixelgate.server.reflection import DocumentedReflectionServicer, documented_files
from pixelgate.server.servicer import ImageServicer
from pixelgate.server.tls import server_credentials
from pixelgate.server.token_keys import UnusableKeyError
from pixelgate.server.token_verifier import TokenVerifier, TrustedIssuer
from pixelgate.server.validation import RequestValidator
from pixelgate.v1 import image_service_pb2 as pb
from pixelgate.v1 import image_service_pb2_grpc as pb_grpc

log = logging.getLogger("pixelgate.server")

IMAGE_SERVICE = pb.DESCRIPTOR.services_by_name["ImageService"]
SERVICE_NAME: str = IMAGE_SERVICE.full_name

TOKENLESS_SERVICES: tuple[str, ...] = (health.SERVICE_NAME, reflection.SERVICE_NAME)
"""Services that need mutual TLS but no access token: the explicit exception list."""

MAX_REQUEST_BYTES = 64 * 1024
"""Largest request message accepted; a GenerateImageRequest within bounds is far smaller."""

Closer = Callable[[], Awaitable[None]]


def needs_token(method: str) -> bool:
    """True for every method outside the token-less services."""
    return not any(method.startswith(f"/{service}/") for service in TOKENLESS_SERVICES)


def not_health(method: str) -> bool:
    """True for every method but the health checks (load balancers probe them)."""
    return not method.startswith(f"/{health.SERVICE_NAME}/")


async def build_verifier(auth: AuthSettings) -> tuple[TokenVerifier, list[Closer]]:
    """Loads (or starts fetching) every issuer's keys; a bad key file stops start-up."""
    issuers: list[TrustedIssuer] = []
    closers: list[Closer] = []
    for settings in auth.issuers:
        try:
            source = key_source(settings)
        except UnusableKeyError as error:
            raise ConfigError(f"issuer {settings.issuer}: {error}") from None
        await source.start()
        closers.append(source.aclose)
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
        )
    else:
        backend = MemoryBackend()
    return Limiter(backend, fail_open=settings.on_backend_failure == "fail_open")


def _per_minute(name: str, capacity: float, per_minute: float) -> Limit:
    return Limit(name=name, capacity=capacity, per_second=per_minute / 60.0)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class RunningServer:
    """A started server: where it listens and the handles needed to stop it."""

    server: grpc.aio.Server
    port: int
    engine: GenerationEngine
    health: health.aio.HealthServicer  # type: ignore[name-defined]
    closers: list[Closer] = field(default_factory=list)

    async def stop(self, grace: float | None) -> None:
        """Health goes NOT_SERVING, new calls are refused, in-flight calls get `grace` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.engine.aclose()
        for close in self.closers:
            await close()


async def start_server(
    settings: Settings, *, model: LoadedModel | None = None, interceptors: bool = True
) -> RunningServer:
    """Builds every piece from `settings`, starts the server and returns it running.

    `model` lets a caller that already loaded the model (tests) share it.
    `interceptors=False` serves with no interceptor at all (mutual TLS still on):
    only for measuring what the chain costs; it is not reachable from settings.
    """
    credentials = server_credentials(settings.tls)
    if model is None:
        model = await asyncio.to_thread(load_model, settings.model, settings.cache_dir)
    models = {model.card.id: model}
    caller_policy = CallerPolicy(settings.policy.rules)
    caller_policy.check_models_exist(models)
    verifier, closers = await build_verifier(settings.auth)
    limits = settings.rate_limit
    limiter = build_limiter(limits)
    closers.append(limiter.backend.aclose)

    engine = GenerationEngine(models, max_queued_jobs=settings.max_queued_jobs)
    auth = settings.auth
    binding = BindingPolicy(
        require_bound_tokens=auth.require_bound_tokens,
        certificate_must_match=auth.certificate_must_match,
        allowed_identities=auth.allowed_client_identities,
    )
    chain = InterceptorChain(
        wrappers=[AuditLog(), ErrorMapping()],
        guards=[
            PeerRateLimit(
                limiter,
                _per_minute("peer", limits.peer_burst, limits.peer_requests_per_minute),
                applies_to=every_method,
            ),
            CertificateAllowlist(binding, applies_to=not_health),
            TokenAuthentication(verifier, binding, applies_to=needs_token),
            ScopeAuthorization(ScopePolicy.from_services([IMAGE_SERVICE]), applies_to=needs_token),
            CallerRateLimit(
                limiter,
                _per_minute("requests", limits.burst, limits.requests_per_minute),
                applies_to=needs_token,
            ),
        ],
    )
    server = grpc.aio.server(
        interceptors=[chain] if interceptors else [],
        options=[
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ("grpc.so_reuseport", 0),  # a busy port is an error, not a shared one
        ],
    )
    servicer = ImageServicer(
        engine,
        RequestValidator(
            models,
            model.card.id,
            max_prompt_bytes=settings.max_prompt_bytes,
            max_images=settings.max_images_per_request,
        ),
        caller_policy,
        GpuQuota(
            limiter,
            _per_minute("gpu", limits.gpu_cost_burst, limits.gpu_cost_per_minute),
            CostModel({model.card.id: settings.model.cost_factor}),
            max_concurrent=limits.max_concurrent_generations,
        ),
        [m.card for m in models.values()],
        default_model=model.card.id,
        chunk_size=settings.chunk_size,
    )
    pb_grpc.add_ImageServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        DocumentedReflectionServicer((SERVICE_NAME, *TOKENLESS_SERVICES), documented_files()),
        server,
    )

    port = server.add_secure_port(_address(settings.host, settings.port), credentials)
    if port == 0:
        raise ConfigError(f"cannot listen on {_address(settings.host, settings.port)}")
    await server.start()
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info("pixelgate listening on %s (mutual TLS)", _address(settings.host, port))
    return RunningServer(
        server=server, port=port, engine=engine, health=health_servicer, closers=closers
    )


__all__ = [
    "IMAGE_SERVICE",
    "SERVICE_NAME",
    "TOKENLESS_SERVICES",
    "RunningServer",
    "build_limiter",
    "build_verifier",
    "needs_token",
    "start_server",
]
