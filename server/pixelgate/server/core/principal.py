"""Who is calling: the data of an authenticated caller.

Authentication makes one from a verified token and the client certificate
(security/authentication.py) and binds it to the call (rpc/call_record.py);
authorization, rate limiting, the data plane and the audit line read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


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

    @property
    def key(self) -> str:
        """A stable identity for per-caller state (rate limits): issuer and subject."""
        return f"{self.issuer} {self.subject}"


__all__ = ["Principal"]
