"""Who may call what: tokens, scopes, rates and input bounds give their statuses."""

from __future__ import annotations

import time

import pytest

from pixelgate.client import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)


def test_a_call_without_a_token_is_unauthenticated(server, connect):
    """No `authorization` metadata: UNAUTHENTICATED, and no image work starts."""
    with pytest.raises(Unauthenticated, match="missing bearer access token"):
        connect(server, token=None).generate("a fox", steps=2)
    assert server.running.engine.stats.jobs_started == 0


@pytest.mark.parametrize(
    "token",
    ["not-a-jwt", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "a.b.c"],
    ids=["garbage", "alg-none", "three-junk-segments"],
)
def test_a_garbled_token_is_unauthenticated_and_never_echoed(server, connect, token):
    """A malformed token is refused, and the status message does not repeat it."""
    with pytest.raises(Unauthenticated) as caught:
        connect(server, token=token).list_models()
    assert token not in caught.value.details


def test_an_expired_token_is_unauthenticated(server, connect, mint):
    """A token past its `exp` (beyond the leeway) is refused."""
    expired = mint(now=time.time() - 7200, lifetime_seconds=3600)
    with pytest.raises(Unauthenticated, match="expired"):
        connect(server, token=expired).list_models()


def test_a_token_from_an_untrusted_key_is_unauthenticated(server, connect):
    """A well-formed token signed by someone else's key is refused."""
    from pixelgate.dev.tokens import generate_signing_key, mint_access_token

    forged = mint_access_token(generate_signing_key(), subject="mallory")
    with pytest.raises(Unauthenticated):
        connect(server, token=forged).list_models()


def test_a_token_without_the_scope_is_permission_denied(server, connect, mint):
    """A valid token lacking `images:generate` cannot generate; it can still list models."""
    client = connect(server, token=mint(scopes=["models:read"]))
    with pytest.raises(PermissionDenied, match="images:generate"):
        client.generate("a fox", steps=2)
    assert client.list_models()
    with pytest.raises(PermissionDenied, match="models:read"):
        connect(server, token=mint(scopes=["images:generate"])).list_models()


def test_concurrent_callers_are_each_judged_by_their_own_token(server, connect, mint):
    """Calls in flight together never borrow each other's token: each is judged by its own."""
    from concurrent.futures import ThreadPoolExecutor

    allowed = connect(server, token=mint(subject="reader", scopes=["models:read"]))
    refused = connect(server, token=mint(subject="writer", scopes=["images:generate"]))

    def list_as(client) -> str:
        try:
            client.list_models()
        except PermissionDenied:
            return "denied"
        return "ok"

    clients = [allowed, refused] * 40
    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(list_as, clients))
    assert outcomes == ["ok", "denied"] * 40


def test_over_the_rate_is_resource_exhausted_with_retry_after(start_server, connect, mint):
    """A caller over its bucket gets RESOURCE_EXHAUSTED and when to retry; others are unaffected."""
    server = start_server(rate_limit={"requests_per_minute": 1, "burst": 2})
    alice = connect(server, token=mint(subject="alice"))
    alice.list_models()
    alice.list_models()
    with pytest.raises(RateLimited) as caught:
        alice.list_models()
    assert caught.value.retry_after == pytest.approx(60, abs=1)
    assert "rate limit" in caught.value.details
    assert connect(server, token=mint(subject="bob")).list_models()


def test_bad_input_is_invalid_argument_naming_field_and_bound(server, connect):
    """An out-of-bounds width names the field, the bound and the value; nothing runs."""
    with pytest.raises(InvalidArgument) as caught:
        connect(server).generate("a fox", width=100)
    assert caught.value.details == "width must be a multiple of 8 from 64 to 512 (got 100)"
    assert server.running.engine.stats.jobs_started == 0


def test_every_violation_is_reported_at_once(server, connect):
    """A request with several bad fields lists all of them in one INVALID_ARGUMENT."""
    with pytest.raises(InvalidArgument) as caught:
        connect(server).generate("", width=4096, steps=1000, num_images=9)
    for field in ("prompt", "width", "steps", "num_images"):
        assert field in caught.value.details


def test_a_prompt_over_the_token_bound_is_invalid_argument(server, connect):
    """A prompt the text encoder would silently truncate is refused instead."""
    with pytest.raises(InvalidArgument, match=r"prompt must be at most 75 tokens"):
        connect(server).generate("word " * 100, steps=2)


def test_an_unknown_model_is_not_found(server, connect):
    """Asking for a model the server does not have is NOT_FOUND."""
    with pytest.raises(NotFound):
        connect(server).generate("a fox", model="sdxl-does-not-exist", steps=2)
