"""The probe listener: plaintext gRPC health only, for Kubernetes probes (no client certificate).

It shares the main server's health, so readiness turns NOT_SERVING as draining begins,
and it closes only after everything else has stopped.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pixelgate.client import GeneratedImage
from pixelgate.v1 import image_service_pb2 as pb
from pixelgate.v1 import image_service_pb2_grpc as pb_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def probed(start_server):
    """A server with its probe listener on a free loopback port."""
    return start_server(probes={"address": "127.0.0.1:0"})


@pytest.fixture
def probe_channel(probed) -> Iterator[grpc.Channel]:
    """A plaintext channel to the probe port, as the kubelet dials it."""
    channel = grpc.insecure_channel(f"127.0.0.1:{probed.running.probe_port}")
    yield channel
    channel.close()


def _check(channel: grpc.Channel, service: str = "") -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def test_probe_port_answers_health_over_plaintext(probed, probe_channel):
    """A plaintext Check on the probe port says SERVING, for the server and for ImageService."""
    assert _check(probe_channel) == SERVING
    assert _check(probe_channel, "pixelgate.v1.ImageService") == SERVING


def test_probe_port_serves_nothing_but_health(probed, probe_channel):
    """ImageService and reflection are not on the probe port: UNIMPLEMENTED, no token asked."""
    with pytest.raises(grpc.RpcError) as listed:
        pb_grpc.ImageServiceStub(probe_channel).ListModels(pb.ListModelsRequest(), timeout=5)
    assert listed.value.code() == grpc.StatusCode.UNIMPLEMENTED

    request = reflection_pb2.ServerReflectionRequest(list_services="")
    stub = reflection_pb2_grpc.ServerReflectionStub(probe_channel)
    with pytest.raises(grpc.RpcError) as reflected:
        list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    assert reflected.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_main_port_still_refuses_plaintext(probed):
    """Turning the probe listener on opens nothing on the main port: plaintext fails there."""
    with grpc.insecure_channel(probed.target) as channel, pytest.raises(grpc.RpcError) as error:
        _check(channel)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_probe_says_not_serving_while_draining_then_closes(probed, probe_channel, connect):
    """On stop the probe turns NOT_SERVING while an in-flight stream drains, and the probe
    port closes only once the server has stopped."""
    stream = connect(probed).stream("a fox", steps=40, seed=3)
    for event in stream:
        if isinstance(event, pb.Progress) and event.step >= 1:
            break
    watch = health_pb2_grpc.HealthStub(probe_channel).Watch(
        health_pb2.HealthCheckRequest(), timeout=30
    )
    assert next(watch).status == SERVING

    stopper = threading.Thread(target=probed.stop, kwargs={"grace": 20})
    stopper.start()
    assert next(watch).status == NOT_SERVING
    watch.cancel()
    assert _check(probe_channel) == NOT_SERVING  # the stream is still draining

    images = [event for event in stream if isinstance(event, GeneratedImage)]
    assert len(images) == 1
    stopper.join(15)
    assert not stopper.is_alive()
    with pytest.raises(grpc.RpcError) as closed:
        _check(probe_channel)
    assert closed.value.code() == grpc.StatusCode.UNAVAILABLE


def test_no_probe_listener_by_default(server):
    """Without a probe address nothing but the mTLS port listens."""
    assert server.settings.probes.address is None
    assert server.running.probe is None and server.running.probe_port is None
