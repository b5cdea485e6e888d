"""Scopes declared in the proto: which caller may call what, deny by default."""

from __future__ import annotations

import pytest

from pixelgate.server.app import IMAGE_SERVICE, SERVICE_NAME, needs_token
from pixelgate.server.core.errors import PermissionDenied
from pixelgate.server.core.principal import Principal
from pixelgate.server.security.authorization import ScopePolicy, declared_scopes
from pixelgate.v1 import image_service_pb2 as pb

POLICY = ScopePolicy.from_services([IMAGE_SERVICE])
GENERATE = f"/{SERVICE_NAME}/GenerateImage"
LIST = f"/{SERVICE_NAME}/ListModels"


def _caller(*scopes: str) -> Principal:
    return Principal(issuer="https://issuer", subject="alice", scopes=frozenset(scopes))


def test_a_caller_with_the_required_scope_is_allowed():
    """images:generate lets a caller generate; models:read lets it list models."""
    policy = POLICY
    policy.check(GENERATE, _caller("images:generate"))
    policy.check(LIST, _caller("models:read"))


def test_a_caller_without_the_scope_is_denied_and_told_which():
    """The refusal names the missing scope, so the caller knows what to ask its issuer for."""
    policy = POLICY
    with pytest.raises(PermissionDenied, match="images:generate"):
        policy.check(GENERATE, _caller("models:read"))
    with pytest.raises(PermissionDenied, match="models:read"):
        policy.check(LIST, _caller("images:generate"))


def test_every_required_scope_must_be_held():
    """A method needing two scopes refuses a caller holding only one of them."""
    policy = ScopePolicy({"/x.Y/Z": {"a", "b"}})
    policy.check("/x.Y/Z", _caller("a", "b", "c"))
    with pytest.raises(PermissionDenied, match="lacks scope b"):
        policy.check("/x.Y/Z", _caller("a"))


def test_a_method_without_a_declaration_is_denied_to_everyone():
    """Deny by default: a new RPC is closed until someone declares who may call it."""
    policy = POLICY
    with pytest.raises(PermissionDenied, match="not open to any caller"):
        policy.check(f"/{SERVICE_NAME}/DeleteEverything", _caller("images:generate", "models:read"))


def test_the_proto_declares_each_methods_scopes():
    """The `access` option in image_service.proto is what the policy enforces."""
    assert declared_scopes([IMAGE_SERVICE]) == {
        GENERATE: frozenset({"images:generate"}),
        LIST: frozenset({"models:read"}),
    }


def test_every_image_service_method_is_protected():
    """Each RPC of the contract needs a token and has a declared scope."""
    methods = [
        f"/{SERVICE_NAME}/{m.name}" for m in pb.DESCRIPTOR.services_by_name["ImageService"].methods
    ]
    assert methods
    for method in methods:
        assert needs_token(method)
        assert POLICY.required(method), method


def test_only_health_and_reflection_go_without_a_token():
    """Health and reflection need mTLS only; anything else, even unknown services, needs a token."""
    assert not needs_token("/grpc.health.v1.Health/Check")
    assert not needs_token("/grpc.health.v1.Health/Watch")
    assert not needs_token("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert needs_token("/grpc.health.v1.HealthX/Check")
    assert needs_token("/pixelgate.v1.ImageService/GenerateImage")
