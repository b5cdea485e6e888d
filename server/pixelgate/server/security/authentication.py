"""Authentication: every protected call carries a valid bearer access token.

The caller's certificate (already verified by the TLS handshake) must be
allowed, for every service but health; the token comes from the
`authorization` metadata (`Bearer <JWT>`),
is verified by the TokenVerifier, must be bound to that certificate as policy
says, and the resulting Principal is bound to the call.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc.aio

from pixelgate.server.core.errors import Unauthenticated
from pixelgate.server.core.identity_memo import IdentityMemo
from pixelgate.server.core.principal import Principal
from pixelgate.server.rpc.call_record import bind_principal
from pixelgate.server.rpc.interception import CallGuard, MethodFilter, Pending, request_metadata
from pixelgate.server.security.client_identity import (
    BindingPolicy,
    ClientCertificate,
    client_certificate,
)
from pixelgate.server.security.token_verifier import TokenVerifier, VerifiedToken


def principal_of(token: VerifiedToken, certificate: ClientCertificate | None) -> Principal:
    """The principal a verified token presented over `certificate` speaks for."""
    return Principal(
        issuer=token.issuer,
        subject=token.subject,
        scopes=token.scopes,
        client_id=token.client_id,
        token_id=token.token_id,
        certificate_identity=certificate.identity if certificate else None,
        claims=token.claims,
    )


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The one bearer token in `metadata`; anything else is Unauthenticated."""
    values = [value for key, value in metadata or () if key == "authorization"]
    if not values:
        raise Unauthenticated("missing bearer access token")
    if len(values) > 1:
        raise Unauthenticated("more than one authorization header")
    value = values[0]
    if isinstance(value, bytes):
        raise Unauthenticated("malformed authorization header")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("authorization header must be 'Bearer <access token>'")
    return token.strip()


class CertificateAllowlist(CallGuard):
    """Refuses callers whose certificate identity the policy does not list (if it lists any)."""

    def __init__(self, binding: BindingPolicy, applies_to: MethodFilter) -> None:
        super().__init__(applies_to)
        self._binding = binding

    def admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._binding.admit_certificate(client_certificate(context.auth_context()))


class TokenAuthentication(CallGuard):
    """Refuses calls without a valid access token and binds the caller's Principal."""

    def __init__(
        self,
        verifier: TokenVerifier,
        binding: BindingPolicy,
        applies_to: MethodFilter,
        *,
        principal_cache_size: int = 1024,
    ) -> None:
        super().__init__(applies_to)
        self._verifier = verifier
        self._binding = binding
        # The verifier hands back the same VerifiedToken object for a cached token, and
        # client_certificate the same object for the same certificate: a caller's
        # repeated calls reuse one Principal instead of building it each time.
        self._principals: IdentityMemo[Principal] = IdentityMemo(principal_cache_size)

    def admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Pending:
        certificate = client_certificate(context.auth_context())
        bearer = bearer_token(request_metadata(context))
        token = self._verifier.verified_before(bearer)
        if token is None:  # a first sight: verify the signature (perhaps fetching keys)
            return self._verify(bearer, certificate)
        self._accept(token, certificate)
        return None

    async def _verify(self, bearer: str, certificate: ClientCertificate | None) -> None:
        self._accept(await self._verifier.verify(bearer), certificate)

    def _accept(self, token: VerifiedToken, certificate: ClientCertificate | None) -> None:
        self._binding.check(token, certificate)
        bind_principal(
            self._principals.get((token, certificate))
            or self._principals.remember((token, certificate), principal_of(token, certificate))
        )


__all__ = ["CertificateAllowlist", "TokenAuthentication", "bearer_token", "principal_of"]
