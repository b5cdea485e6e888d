"""The verified-token cache: a repeated token costs a lookup, yet never outlives its validity."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest

from pixelgate.dev import DEV_AUDIENCE, DEV_ISSUER
from pixelgate.dev.tokens import generate_signing_key, mint_access_token
from pixelgate.server.core.errors import Unauthenticated
from pixelgate.server.security.key_sources import StaticKeys
from pixelgate.server.security.token_keys import verification_key
from pixelgate.server.security.token_verifier import TokenVerifier, TrustedIssuer

KEY = generate_signing_key()
VERIFICATION = verification_key(KEY.public_key(), {"ES256"})


class SwappableKeys(StaticKeys):
    """Static keys a test can replace, as a JWKS refresh would."""

    def replace(self, keys: dict) -> None:
        self._keys = dict(keys)


def _verifier(keys: StaticKeys, clock=time.time, cache_size: int = 100) -> TokenVerifier:
    issuer = TrustedIssuer(DEV_ISSUER, (DEV_AUDIENCE,), keys)
    return TokenVerifier([issuer], leeway_seconds=30, cache_size=cache_size, clock=clock)


def _count_signature_checks(monkeypatch) -> list[int]:
    calls = [0]
    real = jwt.decode

    def counting(*args, **kwargs):
        if kwargs.get("options", {}).get("verify_signature", True):
            calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return calls


def test_a_repeated_token_is_verified_once(monkeypatch):
    """The second and later uses of a token skip the signature check."""
    checks = _count_signature_checks(monkeypatch)
    verifier = _verifier(StaticKeys({VERIFICATION.kid: VERIFICATION}))
    token = mint_access_token(KEY, subject="alice")
    for _ in range(5):
        assert asyncio.run(verifier.verify(token)).subject == "alice"
    assert checks[0] == 1


def test_a_cached_token_is_checked_again_once_past_its_exp(monkeypatch):
    """Past exp plus leeway the cached answer is dropped: the token is verified afresh."""
    checks = _count_signature_checks(monkeypatch)
    now = [time.time()]
    verifier = _verifier(StaticKeys({VERIFICATION.kid: VERIFICATION}), clock=lambda: now[0])
    token = mint_access_token(KEY, subject="alice", lifetime_seconds=60)
    asyncio.run(verifier.verify(token))
    now[0] += 89  # inside exp + 30 s leeway: still the cached answer
    asyncio.run(verifier.verify(token))
    assert checks[0] == 1
    now[0] += 2  # past it: verified again (and, on a real clock, refused as expired)
    asyncio.run(verifier.verify(token))
    assert checks[0] == 2


def test_a_retired_key_invalidates_its_cached_tokens():
    """When the issuer's keys change and the signing key is gone, cached tokens stop working."""
    keys = SwappableKeys({VERIFICATION.kid: VERIFICATION})
    verifier = _verifier(keys)
    token = mint_access_token(KEY, subject="alice")
    asyncio.run(verifier.verify(token))
    other = verification_key(generate_signing_key().public_key(), {"ES256"})
    keys.replace({other.kid: other})
    with pytest.raises(Unauthenticated, match="signing key is not known"):
        asyncio.run(verifier.verify(token))


def test_a_zero_sized_cache_verifies_every_time(monkeypatch):
    """verified_token_cache_size = 0 turns the cache off."""
    checks = _count_signature_checks(monkeypatch)
    verifier = _verifier(StaticKeys({VERIFICATION.kid: VERIFICATION}), cache_size=0)
    token = mint_access_token(KEY, subject="alice")
    for _ in range(3):
        asyncio.run(verifier.verify(token))
    assert checks[0] == 3


def test_the_cache_is_bounded(monkeypatch):
    """Beyond its size the least recently used token must be verified again."""
    checks = _count_signature_checks(monkeypatch)
    verifier = _verifier(StaticKeys({VERIFICATION.kid: VERIFICATION}), cache_size=2)
    tokens = [mint_access_token(KEY, subject=f"user-{i}") for i in range(3)]
    for token in tokens:
        asyncio.run(verifier.verify(token))
    asyncio.run(verifier.verify(tokens[2]))
    assert checks[0] == 3
    asyncio.run(verifier.verify(tokens[0]))  # evicted: checked again
    assert checks[0] == 4
