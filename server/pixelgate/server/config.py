"""Server settings: one typed object, built once at start-up and passed down.

Loaded from an optional TOML file (`pixelgate-server --config FILE`); every
field has a safe default, so with no file the server runs the embedded
development setup: the PKI under `certs/dev/` and the tiny test model.
Unknown keys are errors, so a typo cannot silently turn a protection off.
Relative paths are relative to the working directory.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pixelgate.dev import DEV_AUDIENCE, DEV_DIR, DEV_ISSUER

Algorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]
"""Public-key JWS algorithms; HMAC and `none` cannot be configured."""


class ConfigError(ValueError):
    """The configuration is invalid; the message says where and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pixelgate"


class TlsSettings(_Section):
    """Mutual TLS files, PEM-encoded."""

    cert_file: Path = DEV_DIR / "server.crt"
    """The server's certificate (chain)."""
    key_file: Path = DEV_DIR / "server.key"
    """The server's private key."""
    client_ca_file: Path = DEV_DIR / "ca.crt"
    """CA bundle that client certificates must chain to."""


class IssuerSettings(_Section):
    """An OAuth 2.0 authorization server whose access tokens are accepted."""

    issuer: str = Field(min_length=1)
    """Exact `iss` value of its tokens."""
    audiences: tuple[str, ...] = Field(min_length=1)
    """`aud` values that mean this service; a token must carry one of them."""
    public_key_files: tuple[Path, ...] = Field(min_length=1)
    """PEM public keys its tokens may be signed with (looked up by JWK thumbprint `kid`)."""
    algorithms: tuple[Algorithm, ...] = ("ES256", "EdDSA", "RS256", "PS256")
    """Allowed signature algorithms."""


def _dev_issuer() -> IssuerSettings:
    return IssuerSettings(
        issuer=DEV_ISSUER,
        audiences=(DEV_AUDIENCE,),
        public_key_files=(DEV_DIR / "token-signing.pub",),
    )


class AuthSettings(_Section):
    """Access-token verification."""

    issuers: tuple[IssuerSettings, ...] = Field(
        default_factory=lambda: (_dev_issuer(),), min_length=1
    )
    """Trusted issuers. The default trusts only the development issuer of `make certs`."""
    leeway_seconds: float = Field(default=30.0, ge=0, le=300)
    """Clock skew allowed on `exp`, `nbf` and `iat`."""
    token_types: tuple[str, ...] = ("at+jwt",)
    """Accepted `typ` headers (RFC 9068 access tokens by default)."""


class RateLimitSettings(_Section):
    """Token bucket per authenticated caller."""

    requests_per_minute: float = Field(default=10.0, gt=0)
    """Sustained rate each caller may call at."""
    burst: int = Field(default=10, ge=1)
    """Calls a caller may make at once after being idle (the bucket's size)."""


class ModelSettings(_Section):
    """The model the server runs and the request bounds it accepts.

    The defaults describe the embedded tiny test model; a real model wants its
    own sizes (512 for Stable Diffusion 1.x) and step counts.
    """

    id: str = Field(default="tiny-sd-test", pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
    """The id callers put in GenerateImageRequest.model."""
    source: str | None = None
    """A local directory or a hub id for `from_pretrained`; unset = the tiny test model."""
    description: str = (
        "Tiny Stable-Diffusion-shaped test model with random weights (noise, not pictures)"
    )
    """Shown in ListModels."""
    is_test_model: bool = True
    """Shown in ListModels; true when the weights are random."""
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    """"auto" picks CUDA when present, else the CPU."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """"auto" is float16 on CUDA and float32 on the CPU."""
    min_size: int = Field(default=64, ge=8)
    max_width: int = Field(default=512, ge=8)
    max_height: int = Field(default=512, ge=8)
    default_width: int = Field(default=64, ge=8)
    default_height: int = Field(default=64, ge=8)
    default_steps: int = Field(default=10, ge=1)
    max_steps: int = Field(default=100, ge=1)
    default_guidance_scale: float = Field(default=7.5, ge=0, le=30)

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


class Settings(_Section):
    """Everything the server needs, with safe defaults."""

    host: str = "127.0.0.1"
    """Address to listen on; loopback by default."""
    port: int = Field(default=50051, ge=0, le=65535)
    """Port to listen on; 0 picks a free one."""
    tls: TlsSettings = TlsSettings()
    auth: AuthSettings = AuthSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    model: ModelSettings = ModelSettings()
    max_prompt_bytes: int = Field(default=1000, ge=1, le=16384)
    """Longest prompt (and negative prompt) in UTF-8 bytes."""
    max_images_per_request: int = Field(default=4, ge=1, le=16)
    """Most images one request may ask for."""
    max_queued_jobs: int = Field(default=32, ge=1)
    """Generations waiting or running at once; beyond it calls get RESOURCE_EXHAUSTED."""
    chunk_size: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024)
    """Bytes per ImageChunk message."""
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    """How long in-flight calls may run on after SIGTERM/SIGINT."""
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    """Where the embedded test model is saved on first use."""


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Reads settings from a TOML file (if any), then applies non-None overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    data.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '(top level)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


__all__ = [
    "Algorithm",
    "AuthSettings",
    "ConfigError",
    "IssuerSettings",
    "ModelSettings",
    "RateLimitSettings",
    "Settings",
    "TlsSettings",
    "load_settings",
]
