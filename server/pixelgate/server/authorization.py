"""Authorization: which scopes each method needs. Deny by default.

A method missing from the policy is refused for everyone, so a new RPC is
closed until someone declares who may call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc.aio

from pixelgate.server.errors import PermissionDenied
from pixelgate.server.interception import CallGuard, MethodFilter
from pixelgate.server.principal import Principal, current_principal


class ScopePolicy:
    """Maps full method names to the scopes a caller must hold (all of them)."""

    def __init__(self, required_scopes: Mapping[str, Iterable[str]]) -> None:
        self._required = {method: frozenset(scopes) for method, scopes in required_scopes.items()}

    def check(self, method: str, principal: Principal) -> None:
        """Returns if `principal` may call `method`; raises PermissionDenied otherwise."""
        required = self._required.get(method)
        if required is None:
            raise PermissionDenied("method is not open to any caller")
        missing = sorted(required - principal.scopes)
        if missing:
            raise PermissionDenied(f"access token lacks scope {' '.join(missing)}")


class AuthorizationInterceptor(CallGuard):
    """Refuses calls whose principal lacks the scopes the method needs."""

    def __init__(self, policy: ScopePolicy, applies_to: MethodFilter) -> None:
        super().__init__(applies_to)
        self._policy = policy

    async def admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._policy.check(method, current_principal())


__all__ = ["AuthorizationInterceptor", "ScopePolicy"]
