"""The development token issuer: an ES256 key pair and RFC 9068 access tokens.

A real deployment gets tokens from its OAuth 2.0 authorization server; this
mints the same shape of token for local use and tests.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from pixelgate.dev import DEV_AUDIENCE, DEV_ISSUER
from pixelgate.server.security.token_keys import key_id

SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

ALL_SCOPES: tuple[str, ...] = ("images:generate", "models:read")
"""Every scope the service defines."""


def generate_signing_key() -> ec.EllipticCurvePrivateKey:
    """A new P-256 key for ES256 signatures."""
    return ec.generate_private_key(ec.SECP256R1())


def write_signing_key_pair(key: SigningKey, private_path: Path, public_path: Path) -> None:
    """Writes the private key (mode 0600) and its public half as PEM."""
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def load_signing_key(path: Path) -> SigningKey:
    """Reads a PEM private key written by `write_signing_key_pair`."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path}: only EC and Ed25519 signing keys are supported")
    return key


def _algorithm(key: SigningKey) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    return {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}[key.curve.name]


def mint_access_token(
    key: SigningKey,
    *,
    subject: str,
    scopes: Iterable[str] = ALL_SCOPES,
    lifetime_seconds: float = 3600,
    issuer: str = DEV_ISSUER,
    audience: str = DEV_AUDIENCE,
    client_id: str | None = None,
    now: float | None = None,
    extra_claims: Mapping[str, Any] | None = None,
    extra_headers: Mapping[str, Any] | None = None,
) -> str:
    """Mints an RFC 9068 access token (`typ: at+jwt`) signed by `key`."""
    issued_at = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "iat": issued_at,
        "exp": issued_at + int(lifetime_seconds),
        "jti": str(uuid.uuid4()),
        "client_id": client_id or subject,
        "scope": " ".join(scopes),
    }
    claims.update(extra_claims or {})
    headers = {"typ": "at+jwt", "kid": key_id(key.public_key()), **(extra_headers or {})}
    return jwt.encode(claims, key, algorithm=_algorithm(key), headers=headers)


__all__ = [
    "ALL_SCOPES",
    "SigningKey",
    "generate_signing_key",
    "load_signing_key",
    "mint_access_token",
    "write_signing_key_pair",
]
