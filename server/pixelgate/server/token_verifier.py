"""Access-token verification: RFC 9068 JWTs from configured issuers only.

The verifier trusts nothing the token says about how to verify it: the issuer
must be configured, the key is looked up by `kid` among that issuer's keys
(never fetched from `jku`/`x5u`/`jwk`/`x5c`), and the algorithm must be one the
key itself allows. Every failure is an `Unauthenticated` with a short reason
that names no claim values.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from pixelgate.server.errors import Unauthenticated
from pixelgate.server.principal import Principal
from pixelgate.server.token_keys import VerificationKey

MAX_TOKEN_BYTES = 8192
"""Longer tokens are refused before any parsing."""

REQUIRED_CLAIMS: tuple[str, ...] = ("iss", "sub", "aud", "exp", "iat")

_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "access token expired"),
    (jwt.ImmatureSignatureError, "access token not yet valid"),
    (jwt.InvalidAudienceError, "access token is not for this service (aud)"),
    (jwt.InvalidIssuerError, "access token issuer is not trusted"),
    (jwt.MissingRequiredClaimError, "access token lacks a required claim"),
    (jwt.InvalidAlgorithmError, "access token algorithm is not allowed"),
    (jwt.InvalidSignatureError, "access token signature is not valid"),
    (jwt.DecodeError, "malformed access token"),
)


@dataclass(frozen=True)
class TrustedIssuer:
    """An authorization server whose tokens this service accepts."""

    issuer: str
    audiences: tuple[str, ...]
    keys: Mapping[str, VerificationKey] = field(default_factory=dict)

    @classmethod
    def with_keys(
        cls, issuer: str, audiences: Iterable[str], keys: Iterable[VerificationKey]
    ) -> TrustedIssuer:
        """An issuer whose keys are looked up by their `kid`."""
        return cls(issuer, tuple(audiences), {key.kid: key for key in keys})


def _reason(error: jwt.PyJWTError) -> str:
    for error_type, reason in _REASONS:
        if isinstance(error, error_type):
            return reason
    return "access token is not valid"


class TokenVerifier:
    """Turns a bearer token into a Principal, or raises Unauthenticated."""

    def __init__(
        self,
        issuers: Iterable[TrustedIssuer],
        *,
        leeway_seconds: float = 30.0,
        token_types: Collection[str] = ("at+jwt",),
    ) -> None:
        self._issuers = {issuer.issuer: issuer for issuer in issuers}
        self._leeway = leeway_seconds
        self._token_types = frozenset(_media_type(t) for t in token_types)

    def verify(self, token: str, *, certificate_identity: str | None = None) -> Principal:
        """Verifies `token` and returns who it speaks for."""
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("access token too large")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Unauthenticated("malformed access token") from None
        if "crit" in header:
            # RFC 7515 4.1.11: extensions we do not understand must not be ignored.
            raise Unauthenticated("access token uses unsupported critical headers")
        if _media_type(str(header.get("typ", ""))) not in self._token_types:
            raise Unauthenticated("access token type (typ) is not accepted")
        claimed_issuer = unverified.get("iss")
        issuer = self._issuers.get(claimed_issuer) if isinstance(claimed_issuer, str) else None
        if issuer is None:
            raise Unauthenticated("access token issuer is not trusted")
        key = self._key(issuer, header)
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in key.algorithms:
            raise Unauthenticated("access token algorithm is not allowed")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=sorted(key.algorithms),
                audience=list(issuer.audiences),
                issuer=issuer.issuer,
                leeway=self._leeway,
                options={"require": list(REQUIRED_CLAIMS), "verify_signature": True},
            )
        except jwt.PyJWTError as error:
            raise Unauthenticated(_reason(error)) from None
        return _principal(claims, certificate_identity)

    @staticmethod
    def _key(issuer: TrustedIssuer, header: Mapping[str, Any]) -> VerificationKey:
        kid = header.get("kid")
        if kid is None and len(issuer.keys) == 1:
            return next(iter(issuer.keys.values()))
        key = issuer.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise Unauthenticated("access token signing key is not known")
        return key


def _media_type(value: str) -> str:
    # RFC 8725 3.11 / RFC 9068 2.1: "at+jwt" and "application/at+jwt" are the same type.
    value = value.strip().lower()
    return value.removeprefix("application/")


def _principal(claims: Mapping[str, Any], certificate_identity: str | None) -> Principal:
    subject = claims["sub"]
    scope = claims.get("scope", "")
    client_id = claims.get("client_id")
    token_id = claims.get("jti")
    if not isinstance(subject, str) or not subject:
        raise Unauthenticated("access token subject (sub) is missing")
    if not isinstance(scope, str):
        raise Unauthenticated("access token scope claim is malformed")
    return Principal(
        issuer=claims["iss"],
        subject=subject,
        scopes=frozenset(scope.split()),
        client_id=client_id if isinstance(client_id, str) else None,
        token_id=token_id if isinstance(token_id, str) else None,
        certificate_identity=certificate_identity,
    )


__all__ = ["MAX_TOKEN_BYTES", "REQUIRED_CLAIMS", "TokenVerifier", "TrustedIssuer"]
