"""Authorization: the scopes each RPC declares in the proto. Deny by default.

Every RPC states its required scopes with the `pixelgate.v1.access` method
option; the policy is read from the service descriptors at start-up, so the
contract, reflection and enforcement cannot disagree. A method without the
option is refused for everyone: a new RPC stays closed until someone
declares who may call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc.aio
from google.protobuf.descriptor import ServiceDescriptor

from pixelgate.server.core.errors import PermissionDenied
from pixelgate.server.core.principal import Principal
from pixelgate.server.rpc.call_record import current_principal
from pixelgate.server.rpc.interception import CallGuard, MethodFilter
from pixelgate.v1 import access_pb2


def declared_scopes(services: Iterable[ServiceDescriptor]) -> dict[str, frozenset[str] | None]:
    """Full method name -> scopes its `access` option requires (None: no declaration)."""
    declared: dict[str, frozenset[str] | None] = {}
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            name = f"/{service.full_name}/{method.name}"
            if options.HasExtension(access_pb2.access):
                access = options.Extensions[access_pb2.access]
                declared[name] = frozenset(access.required_scopes)
            else:
                declared[name] = None
    return declared


class ScopePolicy:
    """Maps full method names to the scopes a caller must hold (all of them)."""

    def __init__(self, required_scopes: Mapping[str, Iterable[str] | None]) -> None:
        self._required = {
            method: frozenset(scopes)
            for method, scopes in required_scopes.items()
            if scopes is not None
        }

    @classmethod
    def from_services(cls, services: Iterable[ServiceDescriptor]) -> ScopePolicy:
        """The policy the services' `access` options declare."""
        return cls(declared_scopes(services))

    def required(self, method: str) -> frozenset[str] | None:
        """The scopes `method` needs, or None when it is open to no one."""
        return self._required.get(method)

    def check(self, method: str, principal: Principal) -> None:
        """Returns if `principal` may call `method`; raises PermissionDenied otherwise."""
        required = self._required.get(method)
        if required is None:
            raise PermissionDenied("method is not open to any caller")
        if not required <= principal.scopes:
            missing = sorted(required - principal.scopes)
            raise PermissionDenied(f"access token lacks scope {' '.join(missing)}")


class ScopeAuthorization(CallGuard):
    """Refuses calls whose principal lacks the scopes the method needs."""

    def __init__(self, policy: ScopePolicy, applies_to: MethodFilter) -> None:
        super().__init__(applies_to)
        self._policy = policy

    def admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._policy.check(method, current_principal())


__all__ = ["ScopeAuthorization", "ScopePolicy", "declared_scopes"]
