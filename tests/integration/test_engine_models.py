"""The model registry: several models, load failures, lazy loading, readiness, configuration."""

from __future__ import annotations

import copy
import logging
import re
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from support import FakeRuntime, wait_for

from pixelgate.client import Unavailable
from pixelgate.server.models.runtime import load_model
from pixelgate.v1 import image_service_pb2 as pb

READY = pb.ModelInfo.STATE_READY
FAILED = pb.ModelInfo.STATE_FAILED
SECRET_PATH = "/srv/secret-weights/broken.safetensors"


class RecordingLoader:
    """A loader handing each (model, device) a tagged copy of the tiny model.

    Ids in `broken` fail to load with an error whose message holds a secret path.
    """

    def __init__(self, tiny_model: Any, broken: frozenset[str] = frozenset()) -> None:
        self._tiny_model = tiny_model
        self._broken = broken
        self.loaded: list[tuple[str, str]] = []
        self.runs: list[str] = []

    def __call__(self, settings: Any, device: str) -> FakeRuntime:
        self.loaded.append((settings.id, device))
        if settings.id in self._broken:
            raise FileNotFoundError(2, "No such file or directory", SECRET_PATH)
        return FakeRuntime(copy.deepcopy(self._tiny_model), tag=settings.id, runs=self.runs)


def _models(client) -> dict[str, pb.ModelInfo]:
    return {model.id: model for model in client.list_models()}


def _states(client, **expected: int) -> Callable[[], dict[str, pb.ModelInfo] | None]:
    """A poll: the model list once every named model is in the expected state."""

    def poll() -> dict[str, pb.ModelInfo] | None:
        models = _models(client)
        if all(models[name.replace("_", "-")].state == s for name, s in expected.items()):
            return models
        return None

    return poll


def test_list_models_reports_every_configured_model_and_requests_reach_the_named_one(
    start_server, connect, tiny_model
):
    """A caller sees both models ready with their details, and naming one gets that one."""
    loader = RecordingLoader(tiny_model)
    server = start_server(
        loader=loader,
        models=[
            {"id": "tiny-a"},
            {
                "id": "tiny-b",
                "description": "The second tiny model",
                "is_test_model": False,
                "cost_factor": 2.5,
                "default_steps": 3,
            },
        ],
        engine={"devices": ["cpu"]},
    )
    client = connect(server)
    models = wait_for(_states(client, tiny_a=READY, tiny_b=READY), what="both models ready")

    assert list(models) == ["tiny-a", "tiny-b"]
    a, b = models["tiny-a"], models["tiny-b"]
    assert (a.is_default, b.is_default) == (True, False)
    for model in (a, b):
        assert list(model.devices) == ["cpu"]
        assert model.dtype == "float32"
        assert model.pipeline == "StableDiffusionPipeline"
        assert model.load_error == ""
    assert b.description == "The second tiny model"
    assert not b.is_test_model and a.is_test_model
    assert b.cost_factor == pytest.approx(2.5)
    assert a.cost_factor == pytest.approx(1.0)
    assert (a.default_steps, b.default_steps) == (10, 3)
    assert sorted(loader.loaded) == [("tiny-a", "cpu"), ("tiny-b", "cpu")]

    [image] = client.generate("a fox", model="tiny-b", seed=3)
    assert (image.model, image.steps) == ("tiny-b", 3)  # tiny-b's own default steps
    [default] = client.generate("a fox", steps=2, seed=3)
    assert default.model == "tiny-a"
    assert loader.runs == ["tiny-b", "tiny-a"]


def test_a_model_that_fails_to_load_is_reported_and_refused_while_the_others_serve(
    start_server, connect, tiny_model
):
    """A broken model shows as failed (error kind only) and gets UNAVAILABLE; the rest work."""
    loader = RecordingLoader(tiny_model, broken=frozenset({"broken"}))
    server = start_server(loader=loader, models=[{"id": "tiny-a"}, {"id": "broken"}])
    client = connect(server)
    models = wait_for(_states(client, tiny_a=READY, broken=FAILED), what="broken failed")

    broken = models["broken"]
    assert "FileNotFoundError" in broken.load_error
    for secret in ("secret", "No such file", ".safetensors"):
        assert secret not in broken.load_error
    assert broken.pipeline == "" and broken.dtype == ""
    assert client.health() == "SERVING"  # the default model is fine

    stats = server.running.engine.stats
    with pytest.raises(Unavailable, match="failed to load") as refused:
        client.generate("a fox", model="broken", steps=2)
    assert "secret" not in refused.value.details
    assert stats.jobs_started == 0
    [image] = client.generate("a fox", model="tiny-a", steps=2)
    assert image.model == "tiny-a"
    assert loader.loaded.count(("broken", "cpu")) == 1  # not retried per request


def test_a_lazily_loaded_model_that_fails_gives_its_first_caller_unavailable(
    start_server, connect, tiny_model
):
    """A model loaded on first use that cannot load fails that request, then is refused."""
    loader = RecordingLoader(tiny_model, broken=frozenset({"broken"}))
    server = start_server(
        loader=loader, models=[{"id": "tiny-a"}, {"id": "broken", "preload": False}]
    )
    client = connect(server)
    assert _models(client)["broken"].state == pb.ModelInfo.STATE_NOT_LOADED

    with pytest.raises(Unavailable, match="failed to load"):
        client.generate("a fox", model="broken", steps=2)
    assert _models(client)["broken"].state == FAILED
    with pytest.raises(Unavailable, match="FileNotFoundError"):  # now refused at admission
        client.generate("a fox", model="broken", steps=2)
    assert loader.loaded.count(("broken", "cpu")) == 1
    [image] = client.generate("a fox", steps=2)
    assert image.model == "tiny-a"


def test_a_model_with_preload_off_loads_on_its_first_request(start_server, connect, tiny_model):
    """A lazily loaded model is listed as not loaded until someone asks for it, then it serves."""
    loader = RecordingLoader(tiny_model)
    server = start_server(
        loader=loader, models=[{"id": "tiny-a"}, {"id": "lazy", "preload": False}]
    )
    client = connect(server)
    lazy = _models(client)["lazy"]
    assert lazy.state == pb.ModelInfo.STATE_NOT_LOADED
    assert ("lazy", "cpu") not in loader.loaded

    [image] = client.generate("a fox", model="lazy", steps=2, seed=9)
    assert (image.model, image.seed, image.steps) == ("lazy", 9, 2)
    lazy = _models(client)["lazy"]
    assert lazy.state == READY
    assert lazy.pipeline == "StableDiffusionPipeline"
    assert loader.loaded.count(("lazy", "cpu")) == 1
    [again] = client.generate("a fox", model="lazy", steps=2, seed=9)
    assert again.sha256 == image.sha256
    assert loader.loaded.count(("lazy", "cpu")) == 1  # loaded once, kept
    assert loader.runs == ["lazy", "lazy"]


def test_health_is_not_serving_until_the_default_model_is_ready(
    start_server, connect, tiny_model, caplog
):
    """A load balancer sees NOT_SERVING while the default model loads; queued work then runs."""
    caplog.set_level(logging.INFO, logger="pixelgate.server")
    release = threading.Event()

    def slow_loader(settings: Any, device: str) -> Any:
        release.wait(30)
        return copy.deepcopy(tiny_model)

    started: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: started.setdefault("server", start_server(loader=slow_loader)),
        daemon=True,
    )
    thread.start()
    try:

        def listening_port() -> int | None:
            for record in list(caplog.records):
                found = re.search(r"listening on 127\.0\.0\.1:(\d+)", record.getMessage())
                if found:
                    return int(found.group(1))
            return None

        port = wait_for(listening_port, what="the server listening")
        client = connect(SimpleNamespace(target=f"127.0.0.1:{port}"))
        assert client.health() == "NOT_SERVING"
        assert client.health("pixelgate.v1.ImageService") == "NOT_SERVING"
        [model] = client.list_models()
        assert model.state == pb.ModelInfo.STATE_LOADING
        early = client.stream("an early bird", steps=2, seed=5)
        assert next(early).state == pb.Progress.STATE_QUEUED  # accepted, waits for the model
        assert thread.is_alive()  # start-up still waits for the default model
    finally:
        release.set()
        thread.join(60)
    server = started["server"]
    assert server.running.port == port
    assert client.health() == "SERVING"
    assert client.health("pixelgate.v1.ImageService") == "SERVING"
    events = list(early)
    [image] = [e for e in events if not isinstance(e, pb.Progress)]
    assert (image.seed, image.steps) == (5, 2)
    assert _models(client)["tiny-sd-test"].state == READY


def test_a_default_model_that_fails_leaves_health_not_serving_while_others_serve(
    start_server, connect, tiny_model
):
    """If the default model cannot load, health says so, but other models still answer."""
    loader = RecordingLoader(tiny_model, broken=frozenset({"broken-default"}))
    server = start_server(loader=loader, models=[{"id": "broken-default"}, {"id": "tiny-b"}])
    client = connect(server)
    models = wait_for(_states(client, broken_default=FAILED, tiny_b=READY), what="loads done")
    assert models["broken-default"].is_default
    assert "FileNotFoundError" in models["broken-default"].load_error
    assert client.health() == "NOT_SERVING"
    assert client.health("pixelgate.v1.ImageService") == "NOT_SERVING"

    with pytest.raises(Unavailable, match="failed to load"):
        client.generate("a fox", steps=2)  # the default model
    [image] = client.generate("a fox", model="tiny-b", steps=2)
    assert image.model == "tiny-b"


def test_pipeline_and_scheduler_configured_by_name(start_server, connect, model_cache):
    """A model set up with another scheduler draws differently; an unknown class fails the model."""
    runtimes: dict[str, Any] = {}

    def real_loader(settings: Any, device: str) -> Any:
        runtime = load_model(settings, device, model_cache)
        runtimes[settings.id] = runtime
        return runtime

    server = start_server(
        loader=real_loader,
        models=[
            {"id": "tiny-ddim"},
            {
                "id": "tiny-euler",
                "pipeline": "StableDiffusionPipeline",
                "scheduler": "EulerDiscreteScheduler",
            },
            {"id": "tiny-bad-scheduler", "scheduler": "NoSuchScheduler"},
            {"id": "tiny-bad-pipeline", "pipeline": "NoSuchPipeline"},
        ],
    )
    client = connect(server)
    models = wait_for(
        _states(
            client,
            tiny_ddim=READY,
            tiny_euler=READY,
            tiny_bad_scheduler=FAILED,
            tiny_bad_pipeline=FAILED,
        ),
        what="every model loaded or failed",
    )
    assert models["tiny-euler"].pipeline == "StableDiffusionPipeline"
    assert "ValueError" in models["tiny-bad-scheduler"].load_error
    assert "ValueError" in models["tiny-bad-pipeline"].load_error
    assert type(runtimes["tiny-euler"]._pipeline.scheduler).__name__ == "EulerDiscreteScheduler"
    assert type(runtimes["tiny-ddim"]._pipeline.scheduler).__name__ == "DDIMScheduler"

    [euler] = client.generate("a fox", model="tiny-euler", steps=3, seed=21)
    [ddim] = client.generate("a fox", model="tiny-ddim", steps=3, seed=21)
    assert (euler.model, euler.steps, euler.width) == ("tiny-euler", 3, 64)
    assert euler.sha256 != ddim.sha256  # same weights and seed; the scheduler differs
    with pytest.raises(Unavailable):
        client.generate("a fox", model="tiny-bad-scheduler", steps=2)


def test_a_model_that_fails_on_one_of_two_devices_is_served_by_the_other(
    start_server, connect, mint, tiny_model
):
    """While ListModels says a model is ready, no request for it fails to load."""
    good = FakeRuntime(copy.deepcopy(tiny_model))
    loads: list[str] = []
    lock = threading.Lock()

    def loader(settings: Any, device: str) -> Any:
        with lock:
            loads.append(device)
            first = len(loads) == 1
        if not first:
            raise RuntimeError("the second device has no room for this model")
        return good

    server = start_server(loader=loader, engine={"devices": ["cpu", "cpu"]})
    stats = server.running.engine.stats
    alice = connect(server, token=mint(subject="alice"))
    bob = connect(server, token=mint(subject="bob"))
    [model] = wait_for(
        lambda: [m for m in alice.list_models() if m.state == READY], what="the model ready"
    )
    assert model.load_error == ""

    good.gate.clear()  # the device that has the model is kept busy with the first job
    try:
        first = alice.stream("a fox", steps=2, seed=1)
        next(first)
        wait_for(lambda: good.calls or stats.jobs_failed, what="the first job taken")
        second = bob.stream("a bird", steps=2, seed=2)
        next(second)
        deadline = time.monotonic() + 2
        while len(server.running.engine.queue) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        good.gate.set()
    for stream in (first, second):
        assert [e for e in stream if not isinstance(e, pb.Progress)]


def test_health_turns_serving_once_the_default_model_is_ready_on_any_device(
    start_server, connect, tiny_model
):
    """A load balancer is told the server serves once its default model does."""
    loads: list[str] = []
    lock = threading.Lock()

    def loader(settings: Any, device: str) -> Any:
        with lock:
            loads.append(device)
            first = len(loads) == 1
        if first:
            raise RuntimeError("the first device is busy")
        time.sleep(0.5)  # the other device takes a little longer
        return copy.deepcopy(tiny_model)

    server = start_server(loader=loader, engine={"devices": ["cpu", "cpu"]})
    client = connect(server)
    wait_for(lambda: _models(client)["tiny-sd-test"].state == READY, what="the model ready")
    [image] = client.generate("a fox", steps=2)
    assert image.steps == 2
    wait_for(lambda: client.health() == "SERVING", timeout=3, what="health SERVING")
