"""The composition root: the one place that knows every piece and wires them.

The interceptor chain's order is written here once. Outermost first:
access log, error mapping, authentication, authorization, rate limiting,
then the servicer. Health and reflection need mutual TLS (the transport
requires it of every connection) but no token.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from pixelgate.server.access_log import AccessLogInterceptor
from pixelgate.server.authentication import AuthenticationInterceptor
from pixelgate.server.authorization import AuthorizationInterceptor, ScopePolicy
from pixelgate.server.config import AuthSettings, ConfigError, Settings
from pixelgate.server.engine import GenerationEngine
from pixelgate.server.error_interceptor import ErrorInterceptor
from pixelgate.server.models import LoadedModel, load_model
from pixelgate.server.rate_limit import RateLimiter, RateLimitInterceptor
from pixelgate.server.reflection import DocumentedReflectionServicer, documented_files
from pixelgate.server.servicer import ImageServicer
from pixelgate.server.tls import server_credentials
from pixelgate.server.token_keys import UnusableKeyError, load_public_key, verification_key
from pixelgate.server.token_verifier import TokenVerifier, TrustedIssuer
from pixelgate.server.validation import RequestValidator
from pixelgate.v1 import image_service_pb2 as pb
from pixelgate.v1 import image_service_pb2_grpc as pb_grpc

log = logging.getLogger("pixelgate.server")

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["ImageService"].full_name

REQUIRED_SCOPES: dict[str, set[str]] = {
    f"/{SERVICE_NAME}/GenerateImage": {"images:generate"},
    f"/{SERVICE_NAME}/ListModels": {"models:read"},
}
"""Scopes each method needs. Any other method (health and reflection aside) is denied."""

TOKENLESS_SERVICES: tuple[str, ...] = (
    health.SERVICE_NAME,
    reflection.SERVICE_NAME,
)
"""Services that need mutual TLS but no access token."""

MAX_REQUEST_BYTES = 64 * 1024
"""Largest request message accepted; a GenerateImageRequest within bounds is far smaller."""


def needs_token(method: str) -> bool:
    """True for every method outside the token-less services."""
    return not any(method.startswith(f"/{service}/") for service in TOKENLESS_SERVICES)


def build_verifier(auth: AuthSettings) -> TokenVerifier:
    """Loads every issuer's keys; a bad key stops start-up with a clear error."""
    issuers = []
    for issuer in auth.issuers:
        try:
            keys = [
                verification_key(load_public_key(path), issuer.algorithms)
                for path in issuer.public_key_files
            ]
        except UnusableKeyError as error:
            raise ConfigError(f"issuer {issuer.issuer}: {error}") from None
        issuers.append(TrustedIssuer.with_keys(issuer.issuer, issuer.audiences, keys))
    return TokenVerifier(issuers, leeway_seconds=auth.leeway_seconds, token_types=auth.token_types)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class RunningServer:
    """A started server: where it listens and the handles needed to stop it."""

    server: grpc.aio.Server
    port: int
    engine: GenerationEngine
    health: health.aio.HealthServicer  # type: ignore[name-defined]

    async def stop(self, grace: float | None) -> None:
        """Health goes NOT_SERVING, new calls are refused, in-flight calls get `grace` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.engine.aclose()


async def start_server(settings: Settings, *, model: LoadedModel | None = None) -> RunningServer:
    """Builds every piece from `settings`, starts the server and returns it running.

    `model` lets a caller that already loaded the model (tests) share it.
    """
    verifier = build_verifier(settings.auth)
    credentials = server_credentials(settings.tls)
    if model is None:
        model = await asyncio.to_thread(load_model, settings.model, settings.cache_dir)
    models = {model.card.id: model}

    engine = GenerationEngine(models, max_queued_jobs=settings.max_queued_jobs)
    validator = RequestValidator(
        models,
        model.card.id,
        max_prompt_bytes=settings.max_prompt_bytes,
        max_images=settings.max_images_per_request,
    )
    limiter = RateLimiter(
        requests_per_minute=settings.rate_limit.requests_per_minute,
        burst=settings.rate_limit.burst,
    )
    interceptors = [
        AccessLogInterceptor(),
        ErrorInterceptor(),
        AuthenticationInterceptor(verifier, applies_to=needs_token),
        AuthorizationInterceptor(ScopePolicy(REQUIRED_SCOPES), applies_to=needs_token),
        RateLimitInterceptor(limiter, applies_to=needs_token),
    ]
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ("grpc.so_reuseport", 0),  # a busy port is an error, not a shared one
        ],
    )
    servicer = ImageServicer(
        engine,
        validator,
        [m.card for m in models.values()],
        default_model=model.card.id,
        chunk_size=settings.chunk_size,
    )
    pb_grpc.add_ImageServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        DocumentedReflectionServicer(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), documented_files()
        ),
        server,
    )

    port = server.add_secure_port(_address(settings.host, settings.port), credentials)
    if port == 0:
        raise ConfigError(f"cannot listen on {_address(settings.host, settings.port)}")
    await server.start()
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info("pixelgate listening on %s (mutual TLS)", _address(settings.host, port))
    return RunningServer(server=server, port=port, engine=engine, health=health_servicer)


__all__ = [
    "REQUIRED_SCOPES",
    "SERVICE_NAME",
    "TOKENLESS_SERVICES",
    "RunningServer",
    "build_verifier",
    "needs_token",
    "start_server",
]
