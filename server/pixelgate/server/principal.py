"""Who is calling: the authenticated principal of the current call.

Authentication binds it for the duration of the call; authorization, rate
limiting, the servicer and the access log read it. A context variable is the
asyncio equivalent of a per-call context: each call runs in its own task.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from pixelgate.server.errors import Unauthenticated


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the token's claims that matter plus the TLS identity."""

    issuer: str
    subject: str
    scopes: frozenset[str]
    client_id: str | None = None
    token_id: str | None = None
    certificate_identity: str | None = None

    @property
    def key(self) -> str:
        """A stable identity for per-caller state (rate limits): issuer and subject."""
        return f"{self.issuer} {self.subject}"


_current: ContextVar[Principal | None] = ContextVar("pixelgate_principal", default=None)


def bind_principal(principal: Principal) -> None:
    """Makes `principal` the current call's caller."""
    _current.set(principal)


def current_principal() -> Principal:
    """The current call's caller; fails closed when nothing authenticated it."""
    principal = _current.get()
    if principal is None:
        raise Unauthenticated("missing bearer access token")
    return principal


def maybe_current_principal() -> Principal | None:
    """The current call's caller, or None before (or without) authentication."""
    return _current.get()


__all__ = ["Principal", "bind_principal", "current_principal", "maybe_current_principal"]
