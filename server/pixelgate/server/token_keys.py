"""Token verification keys: loaded from PEM files, named by JWK thumbprint.

Each key is paired with the algorithms its type can verify, intersected with
the issuer's allowlist, so a token's `alg` header can never pick an algorithm
the key was not meant for (HS256 with a public key as the secret, say).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

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
    key: PublicKey
    algorithms: frozenset[str]


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


__all__ = [
    "PUBLIC_KEY_ALGORITHMS",
    "PublicKey",
    "UnusableKeyError",
    "VerificationKey",
    "algorithms_for",
    "key_id",
    "load_public_key",
    "verification_key",
]
