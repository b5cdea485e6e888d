"""The model registry: every configured model, where it runs, and how far it has loaded.

Built once at start-up from the settings. Each model has a card (its request
bounds), a tokenizer of its own for validation, the devices that host it, and
a state that the workers move along: not loaded (lazy), loading, ready, or
failed with the kind of error (details stay in the server log). Each worker
reports for itself; a model is ready once any worker holds it, and failed
only once every worker that should hold it has failed. A model that fails to
load is reported; the others serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pixelgate.server.core.config import ConfigError, EngineSettings, ModelSettings
from pixelgate.server.core.errors import Unavailable
from pixelgate.server.core.model_card import ModelCard
from pixelgate.server.models.runtime import (
    PromptTokenizer,
    load_tokenizer,
    resolve_source,
)
from pixelgate.server.models.weight_files import weights_to_load


class ModelState(enum.Enum):
    """How far a model has come."""

    NOT_LOADED = "not loaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


def engine_devices(settings: EngineSettings) -> list[str]:
    """The devices that get a worker: every CUDA GPU for "auto", else the CPU."""
    if settings.devices == ("auto",):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{index}" for index in range(count)] or ["cpu"]
    return [("cuda:0" if device == "cuda" else device) for device in settings.devices]


def hosting_devices(model: ModelSettings, devices: Sequence[str]) -> tuple[str, ...]:
    """The engine devices that hold a copy of `model`."""
    if model.device == "auto":
        hosts = list(devices)
    elif model.device == "cuda":
        hosts = [device for device in devices if device.startswith("cuda")]
    else:
        hosts = [device for device in devices if device == model.device]
    if not hosts:
        raise ConfigError(
            f"model {model.id} wants device {model.device}, but the engine runs on"
            f" {', '.join(devices)}"
        )
    return tuple(hosts)


@dataclass
class RegisteredModel:
    """A configured model and what the server knows of it now."""

    settings: ModelSettings
    card: ModelCard
    devices: tuple[str, ...]
    tokenizer: PromptTokenizer | None
    state: ModelState = ModelState.NOT_LOADED
    error: str = ""
    pipeline_name: str = ""
    dtype: str = ""
    weights_estimate: int = 0
    """Bytes of the weight files its load reads: the memory guard's figure until it loads."""
    by_worker: dict[str, ModelState] = field(default_factory=dict, repr=False)
    _ready: asyncio.Event | None = field(default=None, repr=False)
    _settled: asyncio.Event | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        """The model's id."""
        return self.card.id

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes in the text encoder (0 without a tokenizer)."""
        return self.tokenizer.count(text) if self.tokenizer is not None else 0


def _overall(model: RegisteredModel) -> ModelState:
    states = list(model.by_worker.values())
    if ModelState.READY in states:
        return ModelState.READY
    if ModelState.LOADING in states:
        return ModelState.LOADING
    if states.count(ModelState.FAILED) >= len(model.devices):
        return ModelState.FAILED
    return ModelState.NOT_LOADED


def _error_kind(error: BaseException) -> str:
    # The class name only: messages can carry paths and hostnames.
    name = re.sub(r"[^A-Za-z0-9_.]", "", type(error).__name__)
    return f"{name} while loading (details in the server log)"


class ModelRegistry(Mapping[str, RegisteredModel]):
    """Every configured model by id; thread-safe state changes from the workers."""

    def __init__(self, models: Sequence[RegisteredModel], default_model: str) -> None:
        self._models = {model.id: model for model in models}
        self.default_model = default_model
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.version = 0
        """Goes up with every state change (ListModels caches by it)."""

    @classmethod
    def from_settings(
        cls,
        models: Sequence[ModelSettings],
        default_model: str,
        devices: Sequence[str],
        cache_dir: Path,
    ) -> ModelRegistry:
        """Reads every model's tokenizer (building the tiny model if it is one)."""
        registered = []
        for settings in models:
            tokenizer = load_tokenizer(settings, cache_dir)
            card = ModelCard.of(settings, tokenizer.max_tokens if tokenizer else None)
            registered.append(
                RegisteredModel(
                    settings,
                    card,
                    hosting_devices(settings, devices),
                    tokenizer,
                    weights_estimate=weights_to_load(
                        resolve_source(settings, cache_dir), settings.variant
                    ),
                )
            )
        return cls(registered, default_model)

    def __getitem__(self, model_id: str) -> RegisteredModel:
        return self._models[model_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop that readiness waiters run on."""
        self._loop = loop
        for model in self._models.values():
            model._ready = asyncio.Event()
            model._settled = asyncio.Event()
            if model.state is ModelState.READY:
                model._ready.set()
            if model.state in (ModelState.READY, ModelState.FAILED):
                model._settled.set()

    def hosted_on(self, device: str) -> list[RegisteredModel]:
        """The models a device's worker holds."""
        return [model for model in self._models.values() if device in model.devices]

    def set_state(
        self,
        model_id: str,
        worker: str,
        state: ModelState,
        *,
        error: BaseException | None = None,
        pipeline_name: str = "",
        dtype: str = "",
    ) -> ModelState:
        """Called by a worker as its loading progresses; returns the model's overall state."""
        with self._lock:
            model = self._models[model_id]
            model.by_worker[worker] = state
            model.state = _overall(model)
            if error is not None:
                model.error = _error_kind(error)  # kept for ListModels until a worker succeeds
            if model.state is ModelState.READY:
                model.error = ""
            model.pipeline_name = pipeline_name or model.pipeline_name
            model.dtype = dtype or model.dtype
            self.version += 1
            overall = model.state
        if self._loop is not None and not self._loop.is_closed():
            # A load abandoned at shutdown may end after the loop has closed: nobody waits.
            with contextlib.suppress(RuntimeError):
                if overall is ModelState.READY and model._ready is not None:
                    self._loop.call_soon_threadsafe(model._ready.set)
                if overall in (ModelState.READY, ModelState.FAILED) and model._settled is not None:
                    self._loop.call_soon_threadsafe(model._settled.set)
        return overall

    def check_servable(self, model_id: str) -> None:
        """UNAVAILABLE for a model that failed to load."""
        model = self._models[model_id]
        if model.state is ModelState.FAILED:
            raise Unavailable(f"model {model_id} failed to load ({model.error})")

    async def wait_settled(self, model_id: str) -> bool:
        """Waits until the model is ready (True) or has failed everywhere (False)."""
        model = self._models[model_id]
        if model._settled is None:
            raise RuntimeError("bind_loop() first")
        await model._settled.wait()
        return model.state is ModelState.READY

    async def wait_ready(self, model_id: str) -> None:
        """Waits until any worker holds the model, however long that takes."""
        model = self._models[model_id]
        if model._ready is None:
            raise RuntimeError("bind_loop() first")
        await model._ready.wait()


__all__ = [
    "ModelRegistry",
    "ModelState",
    "RegisteredModel",
    "engine_devices",
    "hosting_devices",
]
