"""Where each issuer's verification keys come from, and how they stay fresh.

Static sources (PEM files, a JWKS file, an HS256 secret) are read once at
start-up. A remote JWKS, at a configured URL or at the `jwks_uri` of the
issuer's metadata (RFC 8414, else OpenID discovery), is fetched over HTTPS,
refreshed on a schedule, and once more when a token names an unknown `kid`,
at most once per interval, so a flood of random `kid`s cannot hammer the
issuer. A refresh (metadata and JWKS together, from connecting to the last byte)
ends within `http_timeout_seconds`, so an issuer that stalls cannot hold back
callers, later refreshes or start-up. A failed fetch keeps the last good keys
(and, for a discovered JWKS, looks the issuer's metadata up again next time); a
successful fetch is the truth: a key the issuer drops stops verifying, even if
none is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from pixelgate.server.core.config import IssuerSettings, check_fetch_url
from pixelgate.server.security.token_keys import (
    KeySource,
    UnusableKeyError,
    VerificationKey,
    keys_from_jwks,
    load_hmac_secret,
    load_jwks_file,
    load_public_key,
    verification_key,
)

log = logging.getLogger("pixelgate.auth")

MAX_DOCUMENT_BYTES = 1024 * 1024
"""Metadata and JWKS documents larger than this are refused."""

RETRY_WHILE_EMPTY_SECONDS = 10.0
"""How soon a source with no keys at all tries again."""


class StaticKeys:
    """Keys read once from disk: PEM public keys, a JWKS file, or an HS256 secret."""

    def __init__(self, keys: Mapping[str, VerificationKey]) -> None:
        self._keys = dict(keys)

    @classmethod
    def from_settings(cls, settings: IssuerSettings) -> StaticKeys:
        """Reads whichever static source `settings` names."""
        if settings.hmac_secret_file is not None:
            key = load_hmac_secret(settings.hmac_secret_file)
            return cls({key.kid: key})
        if settings.jwks_file is not None:
            return cls(load_jwks_file(settings.jwks_file, settings.algorithms))
        keys = [
            verification_key(load_public_key(path), settings.algorithms)
            for path in settings.public_key_files
        ]
        return cls({key.kid: key for key in keys})

    def keys(self) -> Mapping[str, VerificationKey]:
        return self._keys

    async def refresh_for_unknown_kid(self) -> bool:
        return False

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def metadata_urls(issuer: str) -> list[str]:
    """Where the issuer's metadata may be: RFC 8414 first, then OpenID discovery."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    rfc8414 = urlunsplit(
        (parts.scheme, parts.netloc, f"/.well-known/oauth-authorization-server{path}", "", "")
    )
    openid = urlunsplit(
        (parts.scheme, parts.netloc, f"{path}/.well-known/openid-configuration", "", "")
    )
    return [rfc8414, openid]


class RemoteJwks:
    """Keys fetched from the issuer's JWKS URL, kept fresh in the background."""

    def __init__(
        self,
        settings: IssuerSettings,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._jwks_url = settings.jwks_url
        self._client = client or _http_client(settings)
        self._owns_client = client is None
        self._clock = clock
        self._keys: dict[str, VerificationKey] = {}
        self._last_unknown_kid_refresh = float("-inf")
        self._in_flight: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self.refreshes = 0
        """Fetches attempted since start (metrics read it)."""
        self.refresh_failures = 0
        """Fetches that failed, keeping the last good keys."""

    def keys(self) -> Mapping[str, VerificationKey]:
        return self._keys

    async def start(self) -> None:
        await self.refresh()
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def aclose(self) -> None:
        for task in (self._refresher, self._in_flight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._owns_client:
            await self._client.aclose()

    async def refresh_for_unknown_kid(self) -> bool:
        if self._in_flight is None:
            now = self._clock()
            if now - self._last_unknown_kid_refresh < self._settings.unknown_kid_refresh_seconds:
                return False
            self._last_unknown_kid_refresh = now
        await self.refresh()
        return True

    async def refresh(self) -> None:
        """Fetches the JWKS once; concurrent callers share one fetch."""
        if self._in_flight is None:
            self._in_flight = asyncio.create_task(self._fetch())
            self._in_flight.add_done_callback(self._fetch_done)
        await asyncio.shield(self._in_flight)

    def _fetch_done(self, _: asyncio.Task[None]) -> None:
        self._in_flight = None

    async def _fetch(self) -> None:
        issuer = self._settings.issuer
        url = self._jwks_url
        deadline = self._settings.http_timeout_seconds
        self.refreshes += 1
        try:
            # httpx's timeout bounds each connect and each read: an issuer that sends
            # its headers and then trickles the body passes them all. The refresh as a
            # whole gets the deadline, or it would hold every waiter and refresh behind it.
            async with asyncio.timeout(deadline):
                url = url or await self._discover_jwks_url()
                keys = keys_from_jwks(await self._get_json(url), self._settings.algorithms)
        except (httpx.HTTPError, ValueError, UnusableKeyError, TimeoutError) as error:
            reason = (
                f"no complete answer within {deadline:g} s"
                if isinstance(error, TimeoutError)
                else _safe(error)
            )
            self.refresh_failures += 1
            log.warning(
                "issuer %s: key refresh failed, keeping %d keys: %s",
                issuer,
                len(self._keys),
                reason,
            )
            if self._settings.jwks_url is None:
                self._jwks_url = None  # the issuer may have moved its jwks_uri
            return
        if not keys:
            log.warning("issuer %s: its JWKS holds no usable key; refusing its tokens", issuer)
        self._jwks_url = url
        retired = set(self._keys) - set(keys)
        added = set(keys) - set(self._keys)
        self._keys = keys
        if added or retired:
            log.info(
                "issuer %s: keys now %s (added %s, retired %s)",
                issuer,
                sorted(keys),
                sorted(added),
                sorted(retired),
            )

    async def _discover_jwks_url(self) -> str:
        problems = []
        for url in metadata_urls(self._settings.issuer):
            try:
                metadata = await self._get_json(url)
            except (httpx.HTTPError, ValueError) as error:
                problems.append(f"{url}: {_safe(error)}")
                continue
            # RFC 8414 section 3.3: the metadata must name the very issuer we asked about.
            if metadata.get("issuer") != self._settings.issuer:
                problems.append(f"{url}: names another issuer")
                continue
            jwks_uri = metadata.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                problems.append(f"{url}: no jwks_uri")
                continue
            check_fetch_url(jwks_uri, "jwks_uri")
            return jwks_uri
        raise ValueError("no usable issuer metadata (" + "; ".join(problems) + ")")

    async def _get_json(self, url: str) -> dict[str, Any]:
        async with self._client.stream(
            "GET", url, headers={"accept": "application/json"}
        ) as response:
            response.raise_for_status()
            body = bytearray()
            async for piece in response.aiter_bytes():
                body.extend(piece)
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise ValueError(f"{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            document = json.loads(bytes(body))
        except RecursionError:  # deep nesting fits in the size limit; json recurses per level
            raise ValueError(f"{url}: JSON nested too deeply") from None
        if not isinstance(document, dict):
            raise ValueError(f"{url}: not a JSON object")
        return document

    async def _refresh_forever(self) -> None:
        while True:
            delay = self._settings.jwks_refresh_seconds
            if not self._keys:
                delay = min(delay, RETRY_WHILE_EMPTY_SECONDS)
            await asyncio.sleep(delay)
            try:
                await self.refresh()
            except Exception as error:  # a dead refresher would keep retired keys trusted
                log.error("issuer %s: key refresh crashed: %s", self._settings.issuer, _safe(error))


def _safe(error: Exception) -> str:
    # Exception text from httpx and json names URLs and positions, never secrets.
    return f"{type(error).__name__}: {error}"[:300]


def _http_client(settings: IssuerSettings) -> httpx.AsyncClient:
    verify: ssl.SSLContext | bool = True
    if settings.http_ca_file is not None:
        verify = ssl.create_default_context(cafile=str(settings.http_ca_file))
    return httpx.AsyncClient(
        verify=verify,
        timeout=settings.http_timeout_seconds,
        follow_redirects=False,  # a redirect could leave https or the issuer's host
        trust_env=False,  # no proxy settings from the environment for key fetches
    )


def key_source(settings: IssuerSettings) -> KeySource:
    """The key source `settings` configures."""
    if settings.jwks_url is not None or settings.discovery:
        return RemoteJwks(settings)
    return StaticKeys.from_settings(settings)


__all__ = ["RemoteJwks", "StaticKeys", "key_source", "metadata_urls"]
