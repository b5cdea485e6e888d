"""Who is calling: the authenticated principal of the current call.

Authentication binds it to the call's record for the duration of the call;
authorization, rate limiting, the servicer and the audit line read it there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pixelgate.server.core.errors import Unauthenticated
from pixelgate.server.rpc.call_record import current_record
from pixelgate.server.security.client_identity import ClientCertificate
from pixelgate.server.security.token_verifier import VerifiedToken


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: what its token says plus its certificate identity."""

    issuer: str
    subject: str
    scopes: frozenset[str]
    client_id: str | None = None
    token_id: str | None = None
    certificate_identity: str | None = None
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Every claim of the token, read-only (policy rules match on them)."""

    @classmethod
    def of(cls, token: VerifiedToken, certificate: ClientCertificate | None) -> Principal:
        """The principal a verified token presented over `certificate` speaks for."""
        return cls(
            issuer=token.issuer,
            subject=token.subject,
            scopes=token.scopes,
            client_id=token.client_id,
            token_id=token.token_id,
            certificate_identity=certificate.identity if certificate else None,
            claims=token.claims,
        )

    @property
    def key(self) -> str:
        """A stable identity for per-caller state (rate limits): issuer and subject."""
        return f"{self.issuer} {self.subject}"


def bind_principal(principal: Principal) -> None:
    """Makes `principal` the current call's caller."""
    current_record().principal = principal


def current_principal() -> Principal:
    """The current call's caller; fails closed when nothing authenticated it."""
    principal = current_record().principal
    if principal is None:
        raise Unauthenticated("missing bearer access token")
    return principal


__all__ = ["Principal", "bind_principal", "current_principal"]
