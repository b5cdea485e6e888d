"""Who may ask for what: per-caller policy rules, protection of every method, rich errors."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from pixelgate.client import InvalidArgument, PermissionDenied
from pixelgate.dev.tokens import ALL_SCOPES
from pixelgate.server.core.config import ConfigError
from pixelgate.v1 import image_service_pb2 as pb
from pixelgate.v1 import image_service_pb2_grpc as pb_grpc

TIMEOUT = 10.0

pytestmark = pytest.mark.timeout(60)

FREE_TIER = {
    "name": "free",
    "match": {"claim": "tier", "equals": "free"},
    "max_pixels": 64 * 64,
    "max_steps": 5,
    "max_images": 1,
    "models": ["tiny-sd-test"],
}

TOKENLESS_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")
"""The explicit list of services that answer without an access token."""


# --- per-caller policy rules ---------------------------------------------------------


def test_a_free_tier_caller_is_held_to_its_policy(start_server, connect, mint):
    """A "free" caller asking beyond its limits is refused, naming the policy and the limit."""
    server = start_server(policy={"rules": [FREE_TIER]})
    free = connect(server, token=mint(extra_claims={"tier": "free"}))

    with pytest.raises(PermissionDenied) as caught:
        free.generate("a fox", width=128, height=128, steps=2)
    assert "'free'" in caught.value.details
    assert "width x height at most 4096 (asked 16384)" in caught.value.details

    with pytest.raises(PermissionDenied, match=r"policy 'free'.*steps at most 5 \(asked 6\)"):
        free.generate("a fox", steps=6)
    with pytest.raises(PermissionDenied, match=r"policy 'free'.*num_images at most 1 \(asked 2\)"):
        free.generate("a fox", steps=2, num_images=2)
    assert server.running.engine.stats.jobs_started == 0

    [image] = free.generate("a fox", width=64, height=64, steps=5, seed=1)
    assert (image.width, image.height, image.steps) == (64, 64, 5)


def test_a_caller_the_rule_does_not_match_is_unaffected(start_server, connect, mint):
    """A caller without the tier claim (or with another tier) gets the model's bounds only."""
    server = start_server(policy={"rules": [FREE_TIER]})
    for claims in ({}, {"tier": "pro"}):
        client = connect(server, token=mint(extra_claims=claims))
        [image] = client.generate("a fox", width=128, height=64, steps=6, seed=1)
        assert (image.width, image.steps) == (128, 6)


def test_rules_match_by_scope_and_by_client_id(start_server, connect, mint):
    """A rule can single out callers holding a scope, or one OAuth client."""
    server = start_server(
        policy={
            "rules": [
                {"name": "batch", "match": {"scope": "images:batch"}, "max_steps": 2},
                {"name": "kiosk", "match": {"client_id": "kiosk-app"}, "max_steps": 3},
            ]
        }
    )
    batch = connect(server, token=mint(scopes=[*ALL_SCOPES, "images:batch"]))
    with pytest.raises(PermissionDenied, match=r"policy 'batch'.*steps at most 2"):
        batch.generate("a fox", steps=3)
    assert batch.generate("a fox", steps=2, seed=1)

    kiosk = connect(server, token=mint(client_id="kiosk-app"))
    with pytest.raises(PermissionDenied, match=r"policy 'kiosk'.*steps at most 3"):
        kiosk.generate("a fox", steps=4)
    assert kiosk.generate("a fox", steps=3, seed=1)

    other = connect(server, token=mint(client_id="another-app"))
    assert other.generate("a fox", steps=4, seed=1)


def test_the_first_matching_rule_applies(start_server, connect, mint):
    """Rules are tried in order: a "pro" caller gets its roomy rule, not the catch-all after it."""
    server = start_server(
        policy={
            "rules": [
                {"name": "pro", "match": {"claim": "tier", "equals": "pro"}, "max_steps": 8},
                {"name": "everyone", "max_steps": 2},
            ]
        }
    )
    pro = connect(server, token=mint(extra_claims={"tier": "pro"}))
    assert pro.generate("a fox", steps=6, seed=1)
    with pytest.raises(PermissionDenied, match=r"policy 'pro'.*steps at most 8"):
        pro.generate("a fox", steps=9)
    with pytest.raises(PermissionDenied, match=r"policy 'everyone'.*steps at most 2"):
        connect(server).generate("a fox", steps=6)


def test_a_rule_naming_an_unknown_model_stops_start_up(start_server):
    """A policy that names a model the server does not serve is a configuration error."""
    rule = {**FREE_TIER, "models": ["tiny-sd-test", "no-such-model"]}
    with pytest.raises(
        ConfigError, match=r"policy rule 'free' names unknown models.*no-such-model"
    ):
        start_server(policy={"rules": [rule]})


# --- every method is protected -------------------------------------------------------


def _reflect(ch: grpc.Channel, request: reflection_pb2.ServerReflectionRequest):
    stub = reflection_pb2_grpc.ServerReflectionStub(ch)
    [response] = list(stub.ServerReflectionInfo(iter([request]), timeout=TIMEOUT))
    assert not response.HasField("error_response"), response.error_response
    return response


def _live_methods(ch: grpc.Channel) -> dict[str, list[descriptor_pb2.MethodDescriptorProto]]:
    """Every service the server registers, with its methods, as reflection reports them."""
    listed = _reflect(ch, reflection_pb2.ServerReflectionRequest(list_services=""))
    services: dict[str, list[descriptor_pb2.MethodDescriptorProto]] = {}
    for service in listed.list_services_response.service:
        found = _reflect(
            ch, reflection_pb2.ServerReflectionRequest(file_containing_symbol=service.name)
        )
        for serialized in found.file_descriptor_response.file_descriptor_proto:
            file = descriptor_pb2.FileDescriptorProto.FromString(serialized)
            for described in file.service:
                full_name = f"{file.package}.{described.name}" if file.package else described.name
                if full_name == service.name:
                    services[service.name] = list(described.method)
        assert service.name in services, f"reflection gave no descriptor for {service.name}"
    return services


def _call_raw(ch: grpc.Channel, service: str, method: descriptor_pb2.MethodDescriptorProto):
    """Calls `method` with an empty request and no (de)serialization; returns the status code."""
    path = f"/{service}/{method.name}"
    try:
        if method.client_streaming and method.server_streaming:
            list(ch.stream_stream(path)(iter([b""]), timeout=TIMEOUT))
        elif method.client_streaming:
            ch.stream_unary(path)(iter([b""]), timeout=TIMEOUT)
        elif method.server_streaming:
            list(ch.unary_stream(path)(b"", timeout=TIMEOUT))
        else:
            ch.unary_unary(path)(b"", timeout=TIMEOUT)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_every_method_outside_health_and_reflection_needs_a_token_and_its_scope(
    server, channel, mint
):
    """No method of any registered service answers without a token, or with a scopeless one."""
    services = _live_methods(channel(server, token=None))
    assert set(TOKENLESS_SERVICES) <= set(services)
    protected = {
        (service, method.name): method
        for service, methods in services.items()
        if service not in TOKENLESS_SERVICES
        for method in methods
    }
    assert ("pixelgate.v1.ImageService", "GenerateImage") in protected
    assert ("pixelgate.v1.ImageService", "ListModels") in protected

    no_token = channel(server, token=None)
    no_scopes = channel(server, token=mint(scopes=[]))
    outcomes = {
        f"/{service}/{name}": (_call_raw(no_token, service, m), _call_raw(no_scopes, service, m))
        for (service, name), m in protected.items()
    }
    expected = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    assert outcomes == dict.fromkeys(outcomes, expected)
    assert server.running.engine.stats.jobs_started == 0


def test_health_and_reflection_answer_without_a_token(server, channel):
    """Health checks and reflection work over mTLS alone, as load balancers and grpcurl need."""
    ch = channel(server, token=None)
    response = health_pb2_grpc.HealthStub(ch).Check(
        health_pb2.HealthCheckRequest(service="pixelgate.v1.ImageService"), timeout=TIMEOUT
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    listed = _reflect(ch, reflection_pb2.ServerReflectionRequest(list_services=""))
    assert "pixelgate.v1.ImageService" in {s.name for s in listed.list_services_response.service}


# --- INVALID_ARGUMENT with rich details ----------------------------------------------

BAD_FIELDS = {"prompt", "width", "height", "steps", "guidance_scale", "num_images"}


def _bad_request() -> pb.GenerateImageRequest:
    return pb.GenerateImageRequest(
        prompt="   ",
        width=100,
        height=1024,
        steps=1000,
        guidance_scale=99.0,
        num_images=20,
    )


def test_every_bad_field_is_reported_as_a_bad_request_field_violation(server, channel):
    """One round trip names every bad field, in google.rpc.BadRequest details."""
    stub = pb_grpc.ImageServiceStub(channel(server))
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.GenerateImage(_bad_request(), timeout=TIMEOUT))
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    bad_requests = []
    for packed in status.details:
        if packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            packed.Unpack(bad_request)
            bad_requests.append(bad_request)
    [bad_request] = bad_requests
    fields = [violation.field for violation in bad_request.field_violations]
    assert sorted(fields) == sorted(BAD_FIELDS)  # one violation per bad field
    for violation in bad_request.field_violations:
        assert violation.field in violation.description
    assert server.running.engine.stats.jobs_started == 0


def test_the_client_lists_every_violation(server, connect):
    """The Python client's InvalidArgument carries each (field, description) pair."""
    request = _bad_request()
    with pytest.raises(InvalidArgument) as caught:
        connect(server).generate(
            request.prompt,
            width=request.width,
            height=request.height,
            steps=request.steps,
            guidance_scale=request.guidance_scale,
            num_images=request.num_images,
        )
    violations = caught.value.violations
    assert sorted(field for field, _ in violations) == sorted(BAD_FIELDS)
    assert dict(violations)["width"] == "width must be a multiple of 8 from 64 to 512 (got 100)"
    assert dict(violations)["steps"] == "steps must be from 1 to 100 (got 1000)"
