"""Server settings: one typed object, built once at start-up and passed down.

Loaded from an optional TOML file (`pixelgate-server --config FILE`), then
`PIXELGATE_...` environment variables, then command-line flags, each over the
one before; every field has a safe default, so with neither file nor variables
the server runs the embedded development setup: the PKI under `certs/dev/` and
the tiny test model. Unknown keys and unknown `PIXELGATE_` variables are errors,
so a typo cannot silently turn a protection off. Relative paths are relative to
the working directory.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pixelgate.dev import DEV_AUDIENCE, DEV_DIR, DEV_ISSUER

PublicKeyAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]
Algorithm = PublicKeyAlgorithm | Literal["HS256"]
"""JWS algorithms an issuer may be allowed; `none` can never be configured."""


class ConfigError(ValueError):
    """The configuration is invalid; the message says where and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pixelgate"


def is_loopback_http(url: str) -> bool:
    """True for http:// URLs whose host is a loopback address (for tests)."""
    parsed = urlsplit(url)
    if parsed.scheme != "http" or not parsed.hostname:
        return False
    if parsed.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parsed.hostname).is_loopback
    except ValueError:
        return False


def check_fetch_url(url: str, what: str) -> None:
    """Raises ValueError unless `url` is https, or http to a loopback host."""
    if urlsplit(url).scheme != "https" and not is_loopback_http(url):
        raise ValueError(f"{what} must be https:// (plain http only to a loopback host)")


class TlsSettings(_Section):
    """Mutual TLS files, PEM-encoded."""

    cert_file: Path = DEV_DIR / "server.crt"
    """The server's certificate (chain)."""
    key_file: Path = DEV_DIR / "server.key"
    """The server's private key."""
    client_ca_file: Path = DEV_DIR / "ca.crt"
    """CA bundle that client certificates must chain to."""


class IssuerSettings(_Section):
    """An OAuth 2.0 authorization server whose access tokens are accepted.

    Keys come from exactly one source: PEM files, a JWKS file, a JWKS URL, the
    JWKS URL named in the issuer's metadata (`discovery`), or, for HS256 only,
    a shared secret file.
    """

    issuer: str = Field(min_length=1)
    """Exact `iss` value of its tokens."""
    audiences: tuple[str, ...] = Field(min_length=1)
    """`aud` values that mean this service; a token must carry one of them."""
    algorithms: tuple[Algorithm, ...] = ("ES256", "EdDSA", "RS256", "PS256")
    """Allowed signature algorithms. HS256 only alone, and only with `hmac_secret_file`."""
    public_key_files: tuple[Path, ...] = ()
    """PEM public keys (each key's `kid` is its RFC 7638 thumbprint)."""
    jwks_file: Path | None = None
    """A JWKS document on disk (`kid` as it says)."""
    jwks_url: str | None = None
    """Where to fetch the issuer's JWKS (https; http only to loopback)."""
    discovery: bool = False
    """Find `jwks_uri` in the issuer's RFC 8414 metadata, else its OpenID configuration."""
    hmac_secret_file: Path | None = None
    """A shared secret of at least 32 bytes, for HS256 only."""
    jwks_refresh_seconds: float = Field(default=300.0, ge=1)
    """How often fetched keys are refreshed."""
    unknown_kid_refresh_seconds: float = Field(default=30.0, ge=0)
    """At most one extra refresh per this interval when tokens name an unknown `kid`."""
    http_ca_file: Path | None = None
    """CA bundle for fetching metadata and JWKS (default: the system's)."""
    http_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    """Most seconds a key refresh (metadata and JWKS, connect to last byte) may take."""

    @model_validator(mode="after")
    def _one_key_source(self) -> IssuerSettings:
        sources = [
            name
            for name, present in (
                ("public_key_files", bool(self.public_key_files)),
                ("jwks_file", self.jwks_file is not None),
                ("jwks_url", self.jwks_url is not None),
                ("discovery", self.discovery),
                ("hmac_secret_file", self.hmac_secret_file is not None),
            )
            if present
        ]
        if len(sources) != 1:
            raise ValueError(
                "configure exactly one key source of public_key_files, jwks_file, jwks_url,"
                f" discovery, hmac_secret_file (got {', '.join(sources) or 'none'})"
            )
        uses_hmac = "HS256" in self.algorithms
        if uses_hmac != (self.hmac_secret_file is not None):
            raise ValueError("HS256 needs hmac_secret_file, and hmac_secret_file needs HS256")
        if uses_hmac and len(set(self.algorithms)) != 1:
            raise ValueError("HS256 cannot be mixed with public-key algorithms for one issuer")
        if self.jwks_url is not None:
            check_fetch_url(self.jwks_url, "jwks_url")
        if self.discovery:
            check_fetch_url(self.issuer, "an issuer using discovery")
        return self


def _dev_issuer() -> IssuerSettings:
    return IssuerSettings(
        issuer=DEV_ISSUER,
        audiences=(DEV_AUDIENCE,),
        public_key_files=(DEV_DIR / "token-signing.pub",),
    )


class AuthSettings(_Section):
    """Access-token verification and the caller's certificate identity."""

    issuers: tuple[IssuerSettings, ...] = Field(
        default_factory=lambda: (_dev_issuer(),), min_length=1
    )
    """Trusted issuers. The default trusts only the development issuer of `make certs`."""
    leeway_seconds: float = Field(default=30.0, ge=0, le=300)
    """Clock skew allowed on `exp`, `nbf` and `iat`."""
    token_types: tuple[str, ...] = ("at+jwt",)
    """Accepted `typ` headers: RFC 9068 access tokens; add "JWT" to accept plain JWTs."""
    require_bound_tokens: bool = False
    """Accept only certificate-bound tokens (RFC 8705 `cnf` with `x5t#S256`)."""
    certificate_must_match: Literal["none", "sub", "client_id"] = "none"
    """A token claim that must equal the client certificate's identity."""
    allowed_client_identities: tuple[str, ...] = ()
    """Certificate identities (SPIFFE ID, else DNS name, else CN) let in; empty = any."""
    verified_token_cache_size: int = Field(default=10_000, ge=0)
    """Verified tokens remembered until they expire (0 = verify the signature every call)."""


class RateLimitSettings(_Section):
    """Token buckets: per peer address before authentication, then per caller.

    GPU cost is counted in units of one 512x512 denoising step of a model with
    cost factor 1: a request costs width x height / 512^2 x steps x images x
    the model's factor.
    """

    requests_per_minute: float = Field(default=10.0, gt=0)
    """Sustained calls per minute for each caller."""
    burst: int = Field(default=10, ge=1)
    """Calls a caller may make at once after being idle (the bucket's size)."""
    gpu_cost_per_minute: float = Field(default=500.0, gt=0)
    """Sustained GPU cost units per minute for each caller."""
    gpu_cost_burst: float = Field(default=500.0, gt=0)
    """The GPU-cost bucket's size; one request costing more is refused outright."""
    max_concurrent_generations: int = Field(default=2, ge=1)
    """Generations one caller may have queued or running at once (across the fleet with
    `backend = "redis"`)."""
    slot_lease_seconds: float = Field(default=30.0, ge=1, le=3600)
    """With Redis, a concurrency slot is a lease renewed while its generation runs: the
    slots of a replica that died come back within this long."""
    peer_requests_per_minute: float = Field(default=600.0, gt=0)
    """Calls per minute from one peer address, counted before authentication (per replica)."""
    peer_burst: int = Field(default=100, ge=1)
    """The per-peer bucket's size."""
    backend: Literal["memory", "redis"] = "memory"
    """Where buckets live: in this process, or in a Redis shared by every replica."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """The Redis for `backend = "redis"` (rediss:// for TLS)."""
    redis_key_prefix: str = "pixelgate:ratelimit:"
    """Prefix of every key the limiter writes."""
    redis_timeout_seconds: float = Field(default=0.5, gt=0)
    """A Redis call slower than this counts as a failure."""
    on_backend_failure: Literal["fail_closed", "fail_open"] = "fail_closed"
    """When the backend cannot answer: refuse calls (UNAVAILABLE), or let them through."""
    redis_probe_interval_seconds: float = Field(default=2.0, gt=0, le=300)
    """How often Redis is pinged; while it does not answer and calls fail closed, health
    says NOT_SERVING so load balancers route elsewhere."""


_LONGEST_SECONDS = 2_000_000.0
"""About 23 days: grpc takes these durations as 32-bit milliseconds."""


class ConnectionSettings(_Section):
    """Limits on each client connection (HTTP/2 over mutual TLS), so stalled, idle or
    abusive peers cannot hold sockets, memory or calls for ever."""

    handshake_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    """A connection must finish TLS and start HTTP/2 within this, or it is closed."""
    keepalive_time_seconds: float = Field(default=60.0, gt=0, le=_LONGEST_SECONDS)
    """While a call is open, the server pings a client silent for this long."""
    keepalive_timeout_seconds: float = Field(default=20.0, gt=0, le=_LONGEST_SECONDS)
    """A ping unanswered this long closes the connection (a vanished peer frees its calls)."""
    min_client_ping_interval_seconds: float = Field(default=30.0, gt=0, le=_LONGEST_SECONDS)
    """Clients may ping no more often than this while no data flows; a client pinging faster
    is told `too_many_pings` and disconnected (set client keepalive times above it)."""
    keepalive_without_calls: bool = False
    """Keepalive pings on connections with no call open too, from the server and clients;
    off, a client pinging such a connection is told `too_many_pings` after three pings,
    and `max_idle_seconds` closes it anyway."""
    max_idle_seconds: float = Field(default=300.0, gt=0, le=_LONGEST_SECONDS)
    """A connection with no call open for this long is closed (GOAWAY; clients reconnect)."""
    max_age_seconds: float = Field(default=1800.0, gt=0, le=_LONGEST_SECONDS)
    """A connection older than this (give or take 10%) is told to go away, so clients
    reconnect and rebalance across replicas."""
    max_age_grace_seconds: float = Field(default=300.0, ge=0, le=_LONGEST_SECONDS)
    """Calls still open when a connection reaches its max age get this long to finish."""
    max_concurrent_streams: int = Field(default=100, ge=1, le=2**31 - 1)
    """Calls one connection may have open at once; a client's further calls wait."""


class CallerMatch(_Section):
    """Which callers a policy rule applies to: exactly one condition."""

    scope: str | None = None
    """The token holds this scope."""
    client_id: str | None = None
    """The token's `client_id` equals this."""
    subject: str | None = None
    """The token's `sub` equals this."""
    claim: str | None = None
    """The token has this claim, ..."""
    equals: str | None = None
    """... with this string value."""

    @model_validator(mode="after")
    def _exactly_one(self) -> CallerMatch:
        conditions = (self.scope, self.client_id, self.subject, self.claim)
        if sum(condition is not None for condition in conditions) != 1:
            raise ValueError("a match names exactly one of scope, client_id, subject, claim")
        if (self.claim is None) != (self.equals is None):
            raise ValueError("claim and equals go together")
        return self


class CallerRule(_Section):
    """Limits for the callers a rule matches; a limit left unset adds nothing."""

    name: str = Field(min_length=1, max_length=64)
    """Named in refusals, so a caller knows which policy applied."""
    match: CallerMatch | None = None
    """Unset = every caller (a catch-all belongs last)."""
    max_pixels: int | None = Field(default=None, ge=64 * 64)
    """Largest width x height."""
    max_steps: int | None = Field(default=None, ge=1)
    """Most denoising steps."""
    max_images: int | None = Field(default=None, ge=1)
    """Most images per request."""
    models: tuple[str, ...] | None = None
    """Model ids allowed; unset = all."""


class PolicySettings(_Section):
    """Per-caller limits: the first rule matching a caller applies; none = model bounds only."""

    rules: tuple[CallerRule, ...] = ()


_CLASS_NAME = r"^[A-Z][A-Za-z0-9]{0,80}$"


TINY_MODEL_DEFAULTS: dict[str, Any] = {
    "id": "tiny-sd-test",
    "description": (
        "Tiny Stable-Diffusion-shaped test model with random weights (noise, not pictures)"
    ),
    "is_test_model": True,
    "min_size": 64,
    "max_width": 512,
    "max_height": 512,
    "default_width": 64,
    "default_height": 64,
    "default_steps": 10,
}
"""What a model with no `source` (the embedded tiny test model) defaults to, in place
of the real-model defaults below: sizes a random 64x64 model serves in well under a
second on a CPU, and the flag that tells callers its images are noise."""


class ModelSettings(_Section):
    """A model the server runs and the request bounds it accepts.

    The defaults describe a real Stable Diffusion 1.x-class model (512x512, 30 steps;
    see README "Real models" for SD1.5 and SDXL entries). With no `source`, the model is
    the embedded tiny test model and every bound it does not set takes
    TINY_MODEL_DEFAULTS instead.
    """

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
    """The id callers put in GenerateImageRequest.model (required with a `source`)."""
    source: str | None = None
    """A local directory or a hub id for `from_pretrained`; unset = the tiny test model."""
    description: str = ""
    """Shown in ListModels."""
    is_test_model: bool = False
    """Shown in ListModels; true when the weights are random."""
    pipeline: str | None = Field(default=None, pattern=_CLASS_NAME)
    """A diffusers pipeline class, e.g. "StableDiffusionXLPipeline"; unset = the Auto one."""
    scheduler: str | None = Field(default=None, pattern=_CLASS_NAME)
    """A diffusers scheduler class (e.g. "EulerDiscreteScheduler"); unset = the model's own."""
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    """"auto": a copy on every engine device; or only "cpu", "cuda" (every GPU), "cuda:N"."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """"auto" is float16 on CUDA and float32 on the CPU."""
    variant: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,32}$")
    """The weight files to read, e.g. "fp16" (`diffusion_pytorch_model.fp16.safetensors`):
    half-precision files are read as they are, not fp32 ones read and cast; unset = the
    plain files."""
    preload: bool = True
    """Load at start-up; false loads on first use (that request waits; a lazy default
    model leaves health SERVING from the start)."""
    min_size: int = Field(default=256, ge=8)
    max_width: int = Field(default=1024, ge=8)
    max_height: int = Field(default=1024, ge=8)
    default_width: int = Field(default=512, ge=8)
    default_height: int = Field(default=512, ge=8)
    default_steps: int = Field(default=30, ge=1)
    max_steps: int = Field(default=100, ge=1)
    default_guidance_scale: float = Field(default=7.5, ge=0, le=30)
    cost_factor: float = Field(default=1.0, gt=0)
    """GPU cost of one step relative to a Stable Diffusion 1.5 step at the same size."""
    vae_slicing: bool = True
    """Decode a batch one image at a time (lower peak memory, same result)."""
    vae_tiling_above_pixels: int = Field(default=1024 * 1024, ge=0)
    """Decode images larger than this (width x height) in tiles; 0 = never."""
    activation_mb_per_megapixel: float = Field(default=6000.0, gt=0)
    """Memory a one-megapixel image needs beyond the weights, for the memory guard
    (a starting estimate; on CUDA the engine learns the real figure)."""

    @model_validator(mode="before")
    @classmethod
    def _tiny_model_defaults(cls, data: Any) -> Any:
        # Before validation, so the bounds checks below see the tiny model's figures.
        if isinstance(data, dict) and data.get("source") is None:
            return {**TINY_MODEL_DEFAULTS, **data}
        return data

    @model_validator(mode="after")
    def _bounds_are_consistent(self) -> ModelSettings:
        for name in ("min_size", "max_width", "max_height", "default_width", "default_height"):
            if getattr(self, name) % 8:
                raise ValueError(f"{name} must be a multiple of 8")
        if not self.min_size <= self.default_width <= self.max_width:
            raise ValueError("default_width must lie within min_size..max_width")
        if not self.min_size <= self.default_height <= self.max_height:
            raise ValueError("default_height must lie within min_size..max_height")
        if self.default_steps > self.max_steps:
            raise ValueError("default_steps must not exceed max_steps")
        return self


class EngineSettings(_Section):
    """The work queue and the workers in front of the model devices."""

    devices: tuple[str, ...] = ("auto",)
    """One worker per device: "auto" = every CUDA GPU, else the CPU; or "cpu", "cuda:N"."""
    max_queued_jobs: int = Field(default=32, ge=1)
    """Generations waiting or running at once; beyond it calls get RESOURCE_EXHAUSTED."""
    max_batch_images: int = Field(default=8, ge=1)
    """Most images one pipeline call runs (compatible queued jobs are batched)."""
    max_batch_delay_ms: float = Field(default=0.0, ge=0, le=1000)
    """How long a free worker waits for more compatible jobs before starting a batch."""
    memory_budget_mb: float | Literal["auto"] | None = "auto"
    """Per device; a request predicted to need more is refused. "auto" = 90% of a
    GPU's memory (no guard on the CPU); unset = no guard."""
    warmup: bool = True
    """Run one step per model and device at load, to measure step time and warm kernels."""

    @model_validator(mode="after")
    def _devices_are_named(self) -> EngineSettings:
        for device in self.devices:
            if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
                raise ValueError(f"unknown device {device!r} (auto, cpu, cuda or cuda:N)")
        if "auto" in self.devices and len(self.devices) > 1:
            raise ValueError('"auto" stands alone in devices')
        return self


class OutputSettings(_Section):
    """How images are encoded and what else a caller may ask for."""

    default_quality: int = Field(default=90, ge=1, le=100)
    """JPEG and WebP quality when a request leaves it at 0."""
    allow_metadata: bool = True
    """Honour include_metadata (model, seed and steps in the file)."""
    allow_previews: bool = True
    """Honour preview_every_steps."""
    min_preview_interval_steps: int = Field(default=1, ge=1)
    """A request's preview_every_steps is raised to at least this."""


class SafetySettings(_Section):
    """Optional content checks; a blocked image is reported as filtered, never sent."""

    prompt_denylist: tuple[str, ...] = ()
    """Words or phrases (case-insensitive) that block a prompt."""
    prompt_denylist_file: Path | None = None
    """A file of such phrases, one per line."""
    output_checker: Literal["none", "diffusers"] = "none"
    """"diffusers": the Stable Diffusion safety checker looks at every image."""
    checker_source: str = "CompVis/stable-diffusion-safety-checker"
    """Where the safety checker (and its CLIP feature extractor) loads from."""


class AuditSettings(_Section):
    """Where the audit lines (one JSON line per call) go."""

    destination: str = Field(default="stderr", min_length=1)
    """"stderr", "stdout", or a file path (appended; created readable by its owner only)."""


class TracingSettings(_Section):
    """OpenTelemetry traces: a span per call (child of the caller's W3C `traceparent`) with
    child spans for authentication, queue wait, denoising, encoding and streaming."""

    enabled: bool = True
    """Read the caller's `traceparent` and put the trace id in the audit line; spans are
    recorded only where they go somewhere (an OTLP endpoint)."""
    otlp_endpoint: str | None = None
    """OTLP/gRPC collector to export spans to, e.g. "https://otel-collector:4317"; plain
    http only to a loopback host (a sidecar). Unset: nothing is exported (the default)."""
    otlp_ca_file: Path | None = None
    """CA certificates for an https endpoint signed by a private CA; unset: the system's."""
    sample_ratio: float = Field(default=1.0, ge=0, le=1)
    """Share of calls without a caller's trace that start a recorded trace; a caller's own
    sampling decision in its `traceparent` is always followed."""
    service_name: str = Field(default="pixelgate", min_length=1, max_length=128)
    """The `service.name` of the exported spans."""

    @field_validator("otlp_endpoint")
    @classmethod
    def _secure_endpoint(cls, endpoint: str | None) -> str | None:
        if endpoint is not None:
            check_fetch_url(endpoint, "otlp_endpoint")
        return endpoint


class MetricsSettings(_Section):
    """Prometheus metrics (gRPC calls by method and status, the queue, generations,
    refusals, keys, certificates, models, device memory) on their own HTTP listener."""

    enabled: bool = True
    """Serve `/metrics` at `address`."""
    address: str = "127.0.0.1:9464"
    """"host:port" of the plaintext `/metrics` listener (port 0 picks a free one); loopback
    by default: bind it to the pod's address for a Prometheus outside the pod."""
    principal_labels: bool = False
    """Label generations and refusals with the caller's principal (client id, else subject);
    off, no label ever names a caller."""
    max_principal_labels: int = Field(default=100, ge=1, le=10_000)
    """Distinct principals labelled at most; the rest are counted as "other"."""

    @field_validator("address")
    @classmethod
    def _host_and_port(cls, address: str) -> str:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ValueError('address must be "host:port" (IPv6 as "[::1]:9464")')
        return address


class ProbeSettings(_Section):
    """A plaintext listener serving only gRPC health, for Kubernetes' gRPC probes,
    which cannot present a client certificate; off unless an address is set."""

    address: str | None = None
    """"host:port" to listen on (port 0 picks a free one); unset = no probe listener.
    It answers health checks to anyone who reaches it: bind it to the pod or loopback."""

    @field_validator("address")
    @classmethod
    def _host_and_port(cls, address: str | None) -> str | None:
        if address is None:
            return None
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ValueError('address must be "host:port" (IPv6 as "[::]:8081")')
        return address


class Settings(_Section):
    """Everything the server needs, with safe defaults."""

    host: str = "127.0.0.1"
    """Address to listen on; loopback by default."""
    port: int = Field(default=50051, ge=0, le=65535)
    """Port to listen on; 0 picks a free one."""
    tls: TlsSettings = TlsSettings()
    auth: AuthSettings = AuthSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    connections: ConnectionSettings = ConnectionSettings()
    policy: PolicySettings = PolicySettings()
    models: tuple[ModelSettings, ...] = Field(
        default=(ModelSettings.model_validate({}),), min_length=1
    )
    """The model registry; with none configured, the tiny test model."""
    default_model: str | None = None
    """The model an empty request.model selects; unset = the first."""
    engine: EngineSettings = EngineSettings()
    output: OutputSettings = OutputSettings()
    safety: SafetySettings = SafetySettings()
    audit: AuditSettings = AuditSettings()
    probes: ProbeSettings = ProbeSettings()
    tracing: TracingSettings = TracingSettings()
    metrics: MetricsSettings = MetricsSettings()
    max_prompt_bytes: int = Field(default=1000, ge=1, le=16384)
    """Longest prompt (and negative prompt) in UTF-8 bytes."""
    max_images_per_request: int = Field(default=4, ge=1, le=16)
    """Most images one request may ask for."""
    chunk_size: int = Field(default=1024 * 1024, ge=1024, le=1024 * 1024)
    """Most bytes per ImageChunk message. The default, the contract's bound, streams image
    bytes fastest (tests/benchmarks/image_streaming.py: over mTLS grpcio moves 1 MiB
    messages about 3x as fast as 64 KiB ones) and fits well under grpc's 4 MiB receive
    limit."""
    stream_stall_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    """A GenerateImage stream whose reader takes no message for this long (its send
    waits on a full flow-control window) is cancelled: its job stops, its slot and
    unused GPU cost come back, and it is audited CANCELLED, reason stalled_reader."""
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    """How long in-flight calls may run on after SIGTERM/SIGINT."""
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    """Where the embedded test model is saved on first use."""

    @model_validator(mode="after")
    def _models_are_distinct(self) -> Settings:
        ids = [model.id for model in self.models]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"model ids must be unique (repeated: {', '.join(duplicates)})")
        if self.default_model is not None and self.default_model not in ids:
            raise ValueError(f"default_model {self.default_model!r} is not among the models")
        return self

    @property
    def default_model_id(self) -> str:
        """The id an empty request.model selects."""
        return self.default_model or self.models[0].id


ENV_PREFIX = "PIXELGATE_"
"""Every environment variable naming a setting starts with this."""
ENV_NESTING = "__"
"""Separates a section from its field: PIXELGATE_RATE_LIMIT__BURST is rate_limit.burst."""
NOT_SETTINGS: frozenset[str] = frozenset(
    f"{ENV_PREFIX}{name}"
    for name in (
        # The server's own tuning knob, read before settings load (__main__).
        "SWITCH_INTERVAL",
        # The `pixelgate` client CLI's variables: a shell may hold them beside the server's.
        "TARGET", "CA", "CERT", "KEY", "SERVER_NAME", "TOKEN", "TOKEN_FILE",
        "OAUTH_TOKEN_URL", "CLIENT_ID", "CLIENT_SECRET_FILE", "OAUTH_SCOPES",
        "OAUTH_RESOURCE", "OAUTH_AUDIENCE", "OAUTH_AUTH_METHOD",
    )
)  # fmt: skip
"""PIXELGATE_ variables that are not settings: ignored, never refused."""


def load_settings(
    path: Path | None = None, *, environ: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Reads settings from a TOML file (if any), then the PIXELGATE_ variables of `environ`
    (if given), then applies non-None top-level overrides (command-line flags)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    origins: dict[tuple[str, ...], str] = {}
    if environ is not None:
        for location, variable, value in _environment_settings(environ):
            _merge_at(data, location, value)
            origins[location] = variable
    data.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_describe(exc, origins)}") from None


def _environment_settings(
    environ: Mapping[str, str],
) -> list[tuple[tuple[str, ...], str, Any]]:
    """(setting location, variable, value) for each PIXELGATE_ variable, whole sections
    before their fields so a field's own variable wins."""
    found = []
    for variable, raw in environ.items():
        if not variable.startswith(ENV_PREFIX) or variable in NOT_SETTINGS:
            continue
        location = tuple(variable[len(ENV_PREFIX) :].lower().split(ENV_NESTING))
        annotation = _annotation_at(location, variable)
        found.append((location, variable, _env_value(raw, annotation, variable)))
    return sorted(found, key=lambda item: len(item[0]))


def _annotation_at(location: tuple[str, ...], variable: str) -> Any:
    """The type of the setting at `location`; an unknown one is refused like an unknown key."""
    section: type[BaseModel] = Settings
    for depth, name in enumerate(location):
        field = section.model_fields.get(name)
        if field is None:
            where = ".".join(location[: depth + 1])
            raise ConfigError(f"invalid configuration: {variable}: unknown setting {where}")
        if depth == len(location) - 1:
            return field.annotation
        inner = field.annotation
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            where = ".".join(location[: depth + 1])
            raise ConfigError(
                f"invalid configuration: {variable}: {where} is not a section (it has no fields)"
            )
        section = inner
    raise ConfigError(f"invalid configuration: {variable} names no setting")


def _is_structured(annotation: Any) -> bool:
    """True for settings that are a section or a list (written as JSON in a variable)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    origin = typing.get_origin(annotation)
    if origin in (tuple, list, dict):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_structured(member) for member in typing.get_args(annotation))
    return False


def _env_value(raw: str, annotation: Any, variable: str) -> Any:
    """A scalar as its string (pydantic converts it as it does TOML's); a list or a
    section as JSON, e.g. PIXELGATE_ENGINE__DEVICES='["cuda:0", "cuda:1"]'."""
    if not _is_structured(annotation):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        raise ConfigError(
            f"invalid configuration: {variable}: expected JSON (a list or an object)"
        ) from None


def _merge_at(data: dict[str, Any], location: tuple[str, ...], value: Any) -> None:
    """Sets `value` at `location`, keeping the file's other keys of each section."""
    for name in location[:-1]:
        inner = data.get(name)
        if not isinstance(inner, dict):
            inner = data[name] = {}
        data = inner
    previous = data.get(location[-1])
    if isinstance(previous, dict) and isinstance(value, dict):
        value = {**previous, **value}
    data[location[-1]] = value


def _describe(error: ValidationError, origins: Mapping[tuple[str, ...], str]) -> str:
    located = [(tuple(str(p) for p in e["loc"]), e["type"], e["msg"]) for e in error.errors()]
    problems = []
    for loc, kind, message in located:
        # An invalid item also empties its list; saying so as well is noise.
        if kind == "too_short" and any(
            other[: len(loc)] == loc and other != loc for other, _, _ in located
        ):
            continue
        source = next(
            (origins[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origins), None
        )
        where = f" (from {source})" if source else ""
        problems.append(f"{'.'.join(loc) or '(top level)'}{where}: {message}")
    return "; ".join(problems)


__all__ = [
    "ENV_NESTING",
    "ENV_PREFIX",
    "NOT_SETTINGS",
    "Algorithm",
    "AuditSettings",
    "AuthSettings",
    "CallerMatch",
    "CallerRule",
    "ConfigError",
    "ConnectionSettings",
    "EngineSettings",
    "IssuerSettings",
    "MetricsSettings",
    "ModelSettings",
    "OutputSettings",
    "PolicySettings",
    "ProbeSettings",
    "PublicKeyAlgorithm",
    "RateLimitSettings",
    "SafetySettings",
    "Settings",
    "TlsSettings",
    "TracingSettings",
    "check_fetch_url",
    "is_loopback_http",
    "load_settings",
]
