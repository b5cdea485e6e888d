"""Channel credentials: mutual TLS plus a bearer access token on every call.

The token can be a string, a file (re-read on every call, so a sidecar can
rotate it) or a callable that returns a fresh one. It travels as gRPC call
credentials, which gRPC only ever sends over a secure channel.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc

TokenSource = str | Path | Callable[[], str]
"""A static token, a file holding one, or a function that returns a fresh one."""


def token_provider(source: TokenSource) -> Callable[[], str]:
    """A function that returns the current token from `source`."""
    if isinstance(source, Path):
        path = source
        return lambda: path.read_text(encoding="utf-8").strip()
    if isinstance(source, str):
        token = source.strip()
        return lambda: token
    return source


class _BearerToken(grpc.AuthMetadataPlugin):
    def __init__(self, provider: Callable[[], str]) -> None:
        self._provider = provider

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        try:
            token = self._provider()
        except Exception as error:  # the call fails with UNAVAILABLE, token unread
            callback((), error)
            return
        callback((("authorization", f"Bearer {token}"),), None)


def channel_credentials(
    *, ca_file: Path, cert_file: Path, key_file: Path, token: TokenSource | None
) -> grpc.ChannelCredentials:
    """mTLS credentials (CA to trust, client certificate and key), plus the token if given."""
    tls = grpc.ssl_channel_credentials(
        root_certificates=ca_file.read_bytes(),
        private_key=key_file.read_bytes(),
        certificate_chain=cert_file.read_bytes(),
    )
    if token is None:
        return tls
    return grpc.composite_channel_credentials(
        tls, grpc.metadata_call_credentials(_BearerToken(token_provider(token)))
    )


__all__ = ["TokenSource", "channel_credentials", "token_provider"]
