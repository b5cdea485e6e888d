"""Token verification keys: from PEM files, JWKS documents or a shared secret.

Each key is paired with the algorithms its type can verify, intersected with
the issuer's allowlist, so a token's `alg` header can never pick an algorithm
the key was not meant for (HS256 with a public key as the secret, say).
Symmetric keys come only from a configured secret file, never from a JWKS.
A KeySource is what the verifier asks for an issuer's current keys; the
concrete sources (files, a fetched JWKS) are in key_sources.py, chosen by app.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

PublicKey = (
    ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)

PUBLIC_KEY_ALGORITHMS: frozenset[str] = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
"""Every algorithm a public key may verify; HMAC and `none` are deliberately absent."""

_EC_ALGORITHM = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_MIN_RSA_BITS = 2048
MIN_HMAC_SECRET_BYTES = 32

log = logging.getLogger("pixelgate.auth")


class UnusableKeyError(ValueError):
    """A configured key cannot be used; the message says which and why."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


def _jwk_members(key: PublicKey) -> dict[str, str]:
    """The required JWK members of `key` (RFC 7638 section 3.2)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        numbers = key.public_numbers()
        size = (key.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]
        return {
            "crv": crv,
            "kty": "EC",
            "x": _b64url(numbers.x.to_bytes(size, "big")),
            "y": _b64url(numbers.y.to_bytes(size, "big")),
        }
    if isinstance(key, rsa.RSAPublicKey):
        rsa_numbers = key.public_numbers()
        return {
            "e": _b64url(_int_bytes(rsa_numbers.e)),
            "kty": "RSA",
            "n": _b64url(_int_bytes(rsa_numbers.n)),
        }
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    crv = "Ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else "Ed448"
    return {"crv": crv, "kty": "OKP", "x": _b64url(raw)}


def key_id(key: PublicKey) -> str:
    """The key's RFC 7638 JWK SHA-256 thumbprint, used as its `kid`."""
    canonical = json.dumps(_jwk_members(key), separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def algorithms_for(key: PublicKey) -> frozenset[str]:
    """The JWS algorithms this key's type can verify."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = _EC_ALGORITHM.get(key.curve.name)
        return frozenset({algorithm}) if algorithm else frozenset()
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGORITHMS if key.key_size >= _MIN_RSA_BITS else frozenset()
    return frozenset({"EdDSA"})


@dataclass(frozen=True)
class VerificationKey:
    """A public key, its `kid`, and the algorithms it may verify."""

    kid: str
    key: PublicKey | bytes
    """A public key, or the shared secret of an HS256 issuer."""
    algorithms: frozenset[str]


class KeySource(Protocol):
    """An issuer's current verification keys, by `kid`."""

    def keys(self) -> Mapping[str, VerificationKey]:
        """The keys to verify with now."""
        ...

    async def refresh_for_unknown_kid(self) -> bool:
        """Fetches again if allowed now; True when a fetch happened."""
        ...

    async def start(self) -> None:
        """Loads the first keys and starts any background refresh."""
        ...

    async def aclose(self) -> None:
        """Stops background work."""
        ...


def verification_key(key: PublicKey, allowed_algorithms: Collection[str]) -> VerificationKey:
    """Pairs `key` with the algorithms both its type and the allowlist admit."""
    algorithms = algorithms_for(key) & frozenset(allowed_algorithms) & PUBLIC_KEY_ALGORITHMS
    if not algorithms:
        raise UnusableKeyError(
            f"key {key_id(key)} can verify none of the allowed algorithms "
            f"{sorted(allowed_algorithms)} (RSA keys need at least {_MIN_RSA_BITS} bits)"
        )
    return VerificationKey(kid=key_id(key), key=key, algorithms=algorithms)


def load_public_key(path: Path) -> PublicKey:
    """Reads a PEM public key (SubjectPublicKeyInfo); private keys are refused."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnusableKeyError(
            f"cannot read token verification key {path}: {exc.strerror}"
        ) from None
    if b"PRIVATE KEY" in data:
        raise UnusableKeyError(f"{path} holds a private key; configure the public key only")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise UnusableKeyError(f"{path} is not a PEM public key") from None
    if not isinstance(
        key,
        ec.EllipticCurvePublicKey
        | rsa.RSAPublicKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey,
    ):
        raise UnusableKeyError(f"{path} holds a key type that cannot sign tokens")
    return key


def hmac_key(secret: bytes) -> VerificationKey:
    """An HS256 key from a shared secret of at least 32 bytes (RFC 7518 section 3.2)."""
    if len(secret) < MIN_HMAC_SECRET_BYTES:
        raise UnusableKeyError(
            f"an HS256 secret needs at least {MIN_HMAC_SECRET_BYTES} bytes (got {len(secret)})"
        )
    members = json.dumps({"k": _b64url(secret), "kty": "oct"}, separators=(",", ":"))
    kid = _b64url(hashlib.sha256(members.encode("ascii")).digest())
    return VerificationKey(kid=kid, key=secret, algorithms=frozenset({"HS256"}))


def load_hmac_secret(path: Path) -> VerificationKey:
    """Reads an HS256 secret file (raw bytes; one trailing newline is ignored)."""
    try:
        secret = path.read_bytes()
    except OSError as exc:
        raise UnusableKeyError(f"cannot read HMAC secret {path}: {exc.strerror}") from None
    return hmac_key(secret.removesuffix(b"\n"))


def keys_from_jwks(
    document: Mapping[str, Any], allowed_algorithms: Collection[str]
) -> dict[str, VerificationKey]:
    """The usable signature keys of a JWKS, by `kid` (thumbprint when it has none).

    Symmetric (`oct`) keys, encryption keys and keys no allowed algorithm fits
    are skipped: a JWKS can only ever add public keys.
    """
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise UnusableKeyError("JWKS has no 'keys' list")
    keys: dict[str, VerificationKey] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") == "oct":
            continue
        if entry.get("use", "sig") != "sig":
            continue
        try:
            parsed = jwt.PyJWK(entry).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            log.warning("skipping a JWKS entry that is not a usable key (kid %r)", entry.get("kid"))
            continue
        if not isinstance(parsed, PublicKey):
            continue  # a private key published by mistake is not trusted either
        allowed = set(allowed_algorithms)
        if isinstance(entry.get("alg"), str):
            allowed &= {entry["alg"]}
        try:
            key = verification_key(parsed, allowed)
        except UnusableKeyError:
            continue
        declared_kid = entry.get("kid")
        kid = declared_kid if isinstance(declared_kid, str) else key.kid
        keys[kid] = VerificationKey(kid=kid, key=key.key, algorithms=key.algorithms)
    return keys


def load_jwks_file(path: Path, allowed_algorithms: Collection[str]) -> dict[str, VerificationKey]:
    """Reads a JWKS document from disk."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UnusableKeyError(f"cannot read JWKS file {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError):
        raise UnusableKeyError(f"{path} is not a JSON JWKS document") from None
    if not isinstance(document, dict):
        raise UnusableKeyError(f"{path} is not a JWKS document")
    return keys_from_jwks(document, allowed_algorithms)


__all__ = [
    "MIN_HMAC_SECRET_BYTES",
    "PUBLIC_KEY_ALGORITHMS",
    "KeySource",
    "PublicKey",
    "UnusableKeyError",
    "VerificationKey",
    "algorithms_for",
    "hmac_key",
    "key_id",
    "keys_from_jwks",
    "load_hmac_secret",
    "load_jwks_file",
    "load_public_key",
    "verification_key",
]
