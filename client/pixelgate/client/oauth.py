"""Access tokens from an OAuth 2.0 authorization server: the client-credentials grant.

A `ClientCredentials` is a token source (pass it as `token=`): it asks the
token endpoint for an access token (RFC 6749 section 4.4), authenticating with
client_secret_basic or client_secret_post, asking for `scopes` and naming the
target service with an RFC 8707 `resource` and/or `audience` (Auth0's name for
it), caches the token and fetches a new one shortly before it expires. When the
endpoint cannot be reached or refuses, the call raises `TokenEndpointError`
(the OAuth `error` code and HTTP status); tokens and secrets never appear in errors.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit

import httpx

from pixelgate.client.errors import TokenEndpointError

AuthMethod = Literal["client_secret_basic", "client_secret_post"]

DEFAULT_LIFETIME_SECONDS = 300.0
"""Assumed lifetime when the token endpoint omits `expires_in`."""

_ERROR_CODE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}")
"""RFC 6749 section 5.2's characters for `error`; anything else is not echoed."""


def _loopback_http(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


@dataclass
class _Cached:
    token: str
    expires_at: float


class ClientCredentials:
    """Fetches, caches and refreshes access tokens with the client-credentials grant."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        scopes: Sequence[str] = (),
        audience: str | None = None,
        resource: str | None = None,
        auth_method: AuthMethod = "client_secret_basic",
        refresh_margin_seconds: float = 60.0,
        timeout_seconds: float = 10.0,
        ca_file: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if urlsplit(token_url).scheme != "https" and not _loopback_http(token_url):
            raise ValueError("the token endpoint must be https:// (plain http only to loopback)")
        if resource is not None and not _absolute_uri(resource):
            raise ValueError("resource must be an absolute URI without a fragment (RFC 8707)")
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._scopes = tuple(scopes)
        self._audience = audience
        self._resource = resource
        self._auth_method = auth_method
        self._margin = refresh_margin_seconds
        self._clock = clock
        self._http = httpx.Client(
            verify=str(ca_file) if ca_file else True,
            timeout=timeout_seconds,
            follow_redirects=False,
        )
        self._cached: _Cached | None = None
        self._lock = threading.Lock()

    def __call__(self) -> str:
        """A token valid for at least the refresh margin, fetching one if needed."""
        with self._lock:
            cached = self._cached
            if cached is None or self._clock() >= cached.expires_at - self._margin:
                cached = self._cached = self._fetch()
            return cached.token

    def close(self) -> None:
        """Closes the HTTP connection pool."""
        self._http.close()

    def _fetch(self) -> _Cached:
        form = {"grant_type": "client_credentials"}
        headers = {"accept": "application/json"}
        if self._scopes:
            form["scope"] = " ".join(self._scopes)
        if self._audience:
            form["audience"] = self._audience
        if self._resource:
            form["resource"] = self._resource
        if self._auth_method == "client_secret_basic":
            # RFC 6749 section 2.3.1: form-encode id and secret before Basic encoding.
            pair = f"{quote(self._client_id, safe='')}:{quote(self._client_secret, safe='')}"
            headers["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = self._client_id
            form["client_secret"] = self._client_secret
        requested_at = self._clock()
        try:
            response = self._http.post(self._token_url, data=form, headers=headers)
        except httpx.HTTPError as error:
            # httpx says why (refused, TLS, timeout); its message never holds the form.
            cause = " ".join(f"{type(error).__name__}: {error}".split())[:200]
            raise TokenEndpointError(f"token endpoint unreachable: {cause}") from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        status = response.status_code
        if status != 200:
            raise _refusal(status, body.get("error"))
        token = body.get("access_token")
        token_type = str(body.get("token_type", "")).lower()
        if not isinstance(token, str) or not token or token_type != "bearer":  # noqa: S105
            raise TokenEndpointError(
                f"token endpoint answered without a bearer access_token (HTTP {status})",
                http_status=status,
            )
        lifetime = body.get("expires_in", DEFAULT_LIFETIME_SECONDS)
        if not isinstance(lifetime, int | float) or lifetime <= 0:
            lifetime = DEFAULT_LIFETIME_SECONDS
        return _Cached(token=token, expires_at=requested_at + float(lifetime))


def _absolute_uri(value: str) -> bool:
    return bool(urlsplit(value).scheme) and "#" not in value


def _refusal(status: int, error: object) -> TokenEndpointError:
    code = error if isinstance(error, str) and _ERROR_CODE.fullmatch(error) else None
    verb = "failed" if status >= 500 else "refused"
    reason = f"{code} (HTTP {status})" if code else f"HTTP {status}"
    return TokenEndpointError(
        f"token endpoint {verb}: {reason}", oauth_error=code, http_status=status
    )


__all__ = ["AuthMethod", "ClientCredentials"]
