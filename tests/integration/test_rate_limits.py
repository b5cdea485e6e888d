"""Rate limits as callers see them: statuses, quota metadata, GPU cost, Redis, retries."""

from __future__ import annotations

import re
import time

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from processes import RedisServer
from support import wait_for

from pixelgate.client import (
    PixelgateClient,
    RateLimited,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
)
from pixelgate.v1 import image_service_pb2 as pb
from pixelgate.v1 import image_service_pb2_grpc as pb_grpc

TIMEOUT = 10.0

pytestmark = pytest.mark.timeout(60)


def _metadata(pairs) -> dict[str, str | bytes]:
    return {key: value for key, value in pairs or ()}


def _status_details(error: grpc.RpcError) -> list[object]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no grpc-status-details-bin trailer"
    found: list[object] = []
    for packed in status.details:
        for kind in (error_details_pb2.RetryInfo, error_details_pb2.QuotaFailure):
            if packed.Is(kind.DESCRIPTOR):
                message = kind()
                packed.Unpack(message)
                found.append(message)
    return found


def _remaining(field: str, name: str) -> int:
    match = re.search(rf'"{name}";r=(\d+);t=(\d+)', field)
    assert match, f"no {name!r} entry in ratelimit field {field!r}"
    return int(match.group(1))


def _generate_call(ch: grpc.Channel, **fields) -> grpc.Call:
    fields.setdefault("prompt", "a fox")
    return pb_grpc.ImageServiceStub(ch).GenerateImage(
        pb.GenerateImageRequest(**fields), timeout=TIMEOUT
    )


# --- per-caller request rate -------------------------------------------------------


def test_over_the_rate_carries_retry_after_ratelimit_fields_and_rich_details(
    start_server, channel, connect
):
    """A caller over its rate learns when to retry from trailers, rich details and the client."""
    server = start_server(rate_limit={"burst": 2, "requests_per_minute": 1})
    stub = pb_grpc.ImageServiceStub(channel(server))
    stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT)
    stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT)
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    trailers = _metadata(error.trailing_metadata())
    # One call's worth refills in 60 s; a little of it has refilled since the bucket emptied.
    seconds = int(trailers["retry-after"])
    assert 55 <= seconds <= 60
    assert trailers["ratelimit"] == f'"requests";r=0;t={seconds}'
    assert trailers["ratelimit-policy"] == '"requests";q=2;w=120'

    details = _status_details(error)
    [retry] = [d for d in details if isinstance(d, error_details_pb2.RetryInfo)]
    [quota] = [d for d in details if isinstance(d, error_details_pb2.QuotaFailure)]
    assert retry.retry_delay.seconds == seconds
    assert retry.retry_delay.nanos == 0
    assert [v.subject for v in quota.violations] == ["caller:requests"]
    # The raw Status decodes the same way without grpcio-status, too.
    raw = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert raw.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]

    with pytest.raises(RateLimited) as refused:
        connect(server).list_models(timeout=TIMEOUT)
    # The client reads the RetryInfo delay; a whole second may tick over between the two calls.
    assert refused.value.retry_after in (float(seconds), float(seconds - 1))
    assert "rate limit exceeded" in refused.value.details


def test_successful_unary_calls_report_their_remaining_quota_in_trailers(start_server, channel):
    """Each successful call tells the caller its remaining quota, which goes down call by call.

    A unary call's headers, message and trailers arrive together, so the fields
    ride in the trailers there (a separate header write would cost throughput).
    """
    server = start_server(rate_limit={"burst": 5, "requests_per_minute": 1})
    stub = pb_grpc.ImageServiceStub(channel(server))
    seen = []
    for _ in range(3):
        _, call = stub.ListModels.with_call(pb.ListModelsRequest(), timeout=TIMEOUT)
        assert "ratelimit" not in _metadata(call.initial_metadata())
        metadata = _metadata(call.trailing_metadata())
        assert metadata["ratelimit-policy"] == '"requests";q=5;w=300'
        seen.append(_remaining(metadata["ratelimit"], "requests"))
    assert seen == [4, 3, 2]


def test_a_generation_reports_request_and_gpu_quota_in_initial_metadata(start_server, channel):
    """A generation's initial metadata carries both the request and the GPU limit."""
    server = start_server(
        rate_limit={
            "burst": 5,
            "requests_per_minute": 1,
            "gpu_cost_burst": 10,
            "gpu_cost_per_minute": 1,
        }
    )
    call = _generate_call(channel(server), steps=2, seed=1)
    metadata = _metadata(call.initial_metadata())
    responses = list(call)
    assert any(r.WhichOneof("event") == "complete" for r in responses)
    assert _remaining(metadata["ratelimit"], "requests") == 4
    assert _remaining(metadata["ratelimit"], "gpu") == 9  # 64x64 x 2 steps costs 1/32 unit
    assert '"gpu";q=10;w=600' in metadata["ratelimit-policy"]
    assert '"requests";q=5;w=300' in metadata["ratelimit-policy"]


# --- GPU cost and concurrency --------------------------------------------------------


def test_a_request_costing_more_than_the_gpu_bucket_is_refused_outright(
    start_server, channel, connect
):
    """A job bigger than the whole GPU budget is refused with no retry hint; small ones run."""
    server = start_server(rate_limit={"gpu_cost_burst": 2, "gpu_cost_per_minute": 2})
    with pytest.raises(grpc.RpcError) as caught:
        list(_generate_call(channel(server), width=512, height=512, steps=4))
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "costs 4.0 GPU cost units" in error.details()
    assert "more than the 2 a caller may spend at once" in error.details()
    trailers = _metadata(error.trailing_metadata())
    assert "retry-after" not in trailers
    details = _status_details(error)
    assert not any(isinstance(d, error_details_pb2.RetryInfo) for d in details)
    assert any(isinstance(d, error_details_pb2.QuotaFailure) for d in details)
    assert server.running.engine.stats.jobs_started == 0

    client = connect(server)
    with pytest.raises(RateLimited) as refused:
        client.generate("a fox", width=512, height=512, steps=4)
    assert refused.value.retry_after is None

    [image] = client.generate("a fox", steps=2, seed=1)  # 1/32 unit
    assert image.steps == 2


def test_spending_the_gpu_bucket_then_asking_again_says_when_to_retry(start_server, connect):
    """Once a caller has spent its GPU budget, the next job is refused with a retry delay."""
    # A small bucket keeps the jobs cheap on a CPU: 64x64 x 4 steps costs 1/16 unit.
    server = start_server(rate_limit={"gpu_cost_burst": 0.1, "gpu_cost_per_minute": 0.01})
    client = connect(server)
    [image] = client.generate("a fox", steps=4, seed=1)
    assert image.steps == 4
    with pytest.raises(RateLimited) as refused:
        client.generate("a fox", steps=4, seed=2)
    # 0.0625 - 0.0375 = 0.025 units missing at 0.01 units a minute: about 150 s.
    assert 140 <= refused.value.retry_after <= 150
    assert "GPU cost units" in refused.value.details
    assert server.running.engine.stats.jobs_started == 1


def test_one_caller_is_capped_at_its_concurrent_generations_while_others_get_in(
    start_server, connect, mint
):
    """With a cap of one, a caller's second concurrent job is refused; another caller's is not."""
    server = start_server(rate_limit={"max_concurrent_generations": 1})
    alice = connect(server, token=mint(subject="alice"))
    running = alice.stream("first", steps=100, seed=1)  # cancelled long before it ends
    try:
        while not (isinstance(event := next(running), pb.Progress) and event.step >= 1):
            pass
        with pytest.raises(RateLimited, match="at most 1 generations per caller"):
            next(alice.stream("second", steps=60, seed=2))

        bob = connect(server, token=mint(subject="bob"))
        other = bob.stream("bob's", steps=60, seed=3)
        try:
            assert isinstance(next(other), pb.Progress)  # admitted (queued or running)
        finally:
            other.close()
    finally:
        running.close()


def test_a_cancelled_job_refunds_the_gpu_cost_of_the_steps_it_never_ran(start_server, connect):
    """Cancelling a big job early gives most of its GPU cost back for the caller's next job."""
    full_job = 64 * 64 / (512 * 512) * 100  # 100 steps at 64x64: 1.5625 units
    server = start_server(rate_limit={"gpu_cost_burst": full_job, "gpu_cost_per_minute": 0.001})
    client = connect(server)
    stats = server.running.engine.stats
    first = client.stream("a fox", steps=100, seed=1)
    while not (isinstance(event := next(first), pb.Progress) and event.step >= 2):
        pass
    # While it runs the bucket is empty: without a refund, a second job could not start.
    with pytest.raises(RateLimited) as refused:
        next(client.stream("again", steps=80, seed=2))
    assert refused.value.retry_after is not None and refused.value.retry_after > 3600
    first.close()
    wait_for(lambda: stats.jobs_cancelled == 1)
    # 80 steps (1.25 units) fit in the refund while at most 20 of the 100 steps were charged.
    assert stats.steps_run <= 20, f"the cancel landed only after {stats.steps_run} steps"

    # The refund lands as the cancelled call unwinds; refills add nothing measurable here
    # (0.001 units a minute), so admission can only come from the refund.
    deadline = time.monotonic() + 5
    while True:
        second = client.stream("again", steps=80, seed=2)  # 1.25 units
        try:
            assert isinstance(next(second), pb.Progress)
            break
        except RateLimited:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        finally:
            second.close()


# --- per-peer limit ------------------------------------------------------------------


def test_the_peer_limit_applies_before_authentication_and_to_health_checks(
    start_server, channel, connect
):
    """A flooding address is refused before its token is looked at, health checks included."""
    server = start_server(rate_limit={"peer_burst": 3, "peer_requests_per_minute": 1})
    no_token = connect(server, token=None)
    with pytest.raises(Unauthenticated):
        no_token.list_models(timeout=TIMEOUT)  # 1: counted, then refused for want of a token
    assert no_token.health(timeout=TIMEOUT) == "SERVING"  # 2
    assert connect(server).list_models(timeout=TIMEOUT)  # 3

    with pytest.raises(RateLimited, match="peer address") as refused:
        no_token.list_models(timeout=TIMEOUT)  # 4: refused before authentication
    assert 55 <= refused.value.retry_after <= 60

    health = health_pb2_grpc.HealthStub(channel(server, token=None))
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _metadata(caught.value.trailing_metadata())["ratelimit-policy"] == '"peer";q=3;w=180'


# --- Redis backend -------------------------------------------------------------------


def test_servers_sharing_redis_share_one_budget_per_caller(start_server, connect, redis_url):
    """Two replicas on one Redis count a caller's calls together."""
    limits = {"backend": "redis", "redis_url": redis_url, "burst": 3, "requests_per_minute": 1}
    a = connect(start_server(rate_limit=limits))
    b = connect(start_server(rate_limit=limits))
    assert a.list_models(timeout=TIMEOUT)
    assert a.list_models(timeout=TIMEOUT)
    assert b.list_models(timeout=TIMEOUT)
    with pytest.raises(RateLimited) as refused:
        a.list_models(timeout=TIMEOUT)
    assert 55 <= refused.value.retry_after <= 60
    with pytest.raises(RateLimited):
        b.list_models(timeout=TIMEOUT)


@pytest.fixture
def dead_redis_url(tmp_path) -> str:
    """The URL of a Redis that was started and then stopped: nothing answers there."""
    redis = RedisServer(tmp_path)
    redis.stop()
    return redis.url


def test_with_redis_down_calls_fail_closed_by_default(start_server, connect, dead_redis_url):
    """When the shared limiter cannot be reached, calls are refused as UNAVAILABLE."""
    server = start_server(rate_limit={"backend": "redis", "redis_url": dead_redis_url})
    client = connect(server)
    with pytest.raises(Unavailable, match="rate limiting is unavailable"):
        client.list_models(timeout=TIMEOUT)
    with pytest.raises(Unavailable, match="rate limiting is unavailable"):
        client.generate("a fox", steps=2, timeout=TIMEOUT)


def test_with_redis_down_calls_go_through_when_failing_open(start_server, connect, dead_redis_url):
    """Configured to fail open, the service keeps serving while the limiter's Redis is down."""
    server = start_server(
        rate_limit={
            "backend": "redis",
            "redis_url": dead_redis_url,
            "on_backend_failure": "fail_open",
        }
    )
    client = connect(server)
    assert client.list_models(timeout=TIMEOUT)
    [image] = client.generate("a fox", steps=2, seed=1, timeout=TIMEOUT)
    assert image.steps == 2


# --- the client's RetryPolicy --------------------------------------------------------


def _retrying_client(server, pki, mint, policy: RetryPolicy) -> PixelgateClient:
    return PixelgateClient(
        server.target,
        ca_file=pki.ca_cert,
        cert_file=pki.client_cert,
        key_file=pki.client_key,
        token=mint(),
        retry=policy,
    )


def test_the_client_retries_after_the_delay_the_server_asks_for(start_server, pki, mint):
    """With a RetryPolicy, a rate-limited call waits as told and then succeeds."""
    server = start_server(rate_limit={"burst": 1, "requests_per_minute": 60})
    delays: list[float] = []

    def sleep(seconds: float) -> None:
        delays.append(seconds)
        time.sleep(seconds)

    with _retrying_client(server, pki, mint, RetryPolicy(sleep=sleep)) as client:
        assert client.list_models(timeout=TIMEOUT)
        assert client.list_models(timeout=TIMEOUT)  # refused once, retried after 1 s
        assert delays == [1.0]
        [image] = client.generate("a fox", steps=2, seed=1)  # a generation is retried too
        assert image.steps == 2
    assert delays == [1.0, 1.0]


def test_the_client_does_not_wait_longer_than_its_max_delay(start_server, pki, mint):
    """A retry-after beyond max_delay is raised at once rather than slept through."""
    server = start_server(rate_limit={"burst": 1, "requests_per_minute": 1})
    delays: list[float] = []
    policy = RetryPolicy(max_delay=30, sleep=delays.append)
    with _retrying_client(server, pki, mint, policy) as client:
        assert client.list_models(timeout=TIMEOUT)
        with pytest.raises(RateLimited) as refused:
            client.list_models(timeout=TIMEOUT)
    assert 55 <= refused.value.retry_after <= 60
    assert delays == []
