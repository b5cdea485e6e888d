"""CallerPolicy: the first rule matching a caller caps what it may ask for.

Rules match by scope, client id, subject or a string claim; a request over a
rule's cap on size, steps, images or models is refused naming the rule and the
limit. Callers no rule matches are held only to the model's own bounds.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest
from support import generation_request as request

from pixelgate.server.core.config import CallerMatch, CallerRule, ConfigError
from pixelgate.server.core.errors import PermissionDenied
from pixelgate.server.core.generation import GenerationRequest
from pixelgate.server.core.principal import Principal
from pixelgate.server.limits.caller_policy import CallerPolicy


def caller(
    subject: str = "alice",
    scopes: tuple[str, ...] = (),
    client_id: str | None = None,
    **claims: Any,
) -> Principal:
    return Principal(
        issuer="https://issuer.test",
        subject=subject,
        scopes=frozenset(scopes),
        client_id=client_id,
        claims=MappingProxyType(claims),
    )


def refusal(policy: CallerPolicy, principal: Principal, asked: GenerationRequest) -> str:
    with pytest.raises(PermissionDenied) as caught:
        policy.check(principal, asked)
    return caught.value.message


FREE = CallerRule(name="free", match=CallerMatch(claim="tier", equals="free"), max_steps=10)
BATCH = CallerRule(name="batch", match=CallerMatch(scope="images:batch"), max_images=8)
KIOSK = CallerRule(name="kiosk", match=CallerMatch(client_id="kiosk-7"), max_pixels=256 * 256)
BOB = CallerRule(name="bob", match=CallerMatch(subject="bob"), models=("tiny",))
EVERYONE = CallerRule(name="default", max_images=1)
POLICY = CallerPolicy([FREE, BATCH, KIOSK, BOB, EVERYONE])


@pytest.mark.parametrize(
    ("principal", "rule"),
    [
        (caller(tier="free"), "free"),
        (caller(scopes=("images:generate", "images:batch")), "batch"),
        (caller(client_id="kiosk-7"), "kiosk"),
        (caller(subject="bob"), "bob"),
        (caller(), "default"),
        (caller(tier="paid"), "default"),  # a claim with another value does not match
        (caller(tier=["free"]), "default"),  # only a string claim matches
    ],
)
def test_rule_chosen_by_scope_client_subject_or_claim(principal: Principal, rule: str) -> None:
    """Each kind of match picks its rule; a caller no rule names gets the catch-all."""
    chosen = POLICY.rule_for(principal)
    assert chosen is not None and chosen.name == rule


def test_first_matching_rule_wins() -> None:
    """A caller two rules match is held to the earlier one only."""
    principal = caller(tier="free", scopes=("images:batch",))
    assert refusal(POLICY, principal, request(steps=11)).endswith("steps at most 10 (asked 11)")
    POLICY.check(principal, request(steps=10, images=4))  # the batch rule's cap does not apply


def test_no_rule_means_no_policy_limit() -> None:
    """With no rules, any request passes (the model's bounds were checked by validation)."""
    CallerPolicy([]).check(caller(), request(width=2048, height=2048, steps=150, images=16))


@pytest.mark.parametrize(
    ("principal", "asked", "message"),
    [
        (
            caller(tier="free"),
            request(steps=11),
            "request exceeds policy 'free': steps at most 10 (asked 11)",
        ),
        (
            caller(scopes=("images:batch",)),
            request(images=9),
            "request exceeds policy 'batch': num_images at most 8 (asked 9)",
        ),
        (
            caller(client_id="kiosk-7"),
            request(width=264, height=256),
            f"request exceeds policy 'kiosk': width x height at most {256 * 256}"
            f" (asked {264 * 256})",
        ),
        (
            caller(subject="bob"),
            request(model="sd"),
            "request exceeds policy 'bob': model sd is not allowed",
        ),
        (
            caller(),
            request(images=2),
            "request exceeds policy 'default': num_images at most 1 (asked 2)",
        ),
    ],
)
def test_over_a_cap_is_refused_naming_rule_and_limit(
    principal: Principal, asked: GenerationRequest, message: str
) -> None:
    """Each cap refuses one past it with PERMISSION_DENIED and a message a caller can act on."""
    assert refusal(POLICY, principal, asked) == message


def test_caps_are_inclusive() -> None:
    """A request exactly at every cap of its rule passes."""
    POLICY.check(caller(tier="free"), request(steps=10))
    POLICY.check(caller(scopes=("images:batch",)), request(images=8))
    POLICY.check(caller(client_id="kiosk-7"), request(width=256, height=256))
    POLICY.check(caller(subject="bob"), request(model="tiny"))


def test_model_refusal_named_before_size() -> None:
    """A request breaking several caps of its rule is refused for the model first."""
    rule = CallerRule(name="small", models=("tiny",), max_pixels=64 * 64, max_steps=1)
    message = refusal(CallerPolicy([rule]), caller(), request(model="sd", steps=5))
    assert message == "request exceeds policy 'small': model sd is not allowed"


def test_rules_naming_unknown_models_fail_at_start_up() -> None:
    """A rule allowing a model the server does not serve is a configuration error."""
    policy = CallerPolicy([BOB])
    policy.check_models_exist(["tiny", "sd"])
    with pytest.raises(ConfigError, match=r"policy rule 'bob' names unknown models \['tiny'\]"):
        policy.check_models_exist(["sd"])
