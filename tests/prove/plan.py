"""How big each scenario is (short for CI, full by default), and the servers it runs on."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processes import server_settings
from pydantic import BaseModel

from pixelgate.server.core.config import Settings

from .fleet import Fleet, ServerProcess
from .identity import Identities

GRACE_S = 5.0
"""shutdown_grace_seconds of every server: SIGTERM must end each within it."""

STALL_TIMEOUT_S = 2.0
"""The stalled-reader timeout the servers get, where the setting exists."""

NEARLY_NO_REFILL = 0.001
"""requests_per_minute for the rate-limit servers: a bucket refills one call in 16 hours."""


@dataclass(frozen=True)
class Sizes:
    """Counts and bounds of every scenario."""

    load_callers: int
    load_generations: int
    storm_streams: int
    storm_threads: int
    stalled_callers: int
    burst: int
    memory_calls: int
    replica_calls: int
    outage_calls: int
    sigterm_streams: int
    fuzz_bodies: int
    fuzz_metadata: int

    @property
    def max_queued_jobs(self) -> int:
        """The main server's queue: room for every load caller, and for the storm's probes."""
        return max(16, self.load_callers + 8, 2 * self.storm_threads)


SHORT = Sizes(
    load_callers=4,
    load_generations=3,
    storm_streams=40,
    storm_threads=4,
    stalled_callers=1,
    burst=10,
    memory_calls=25,
    replica_calls=30,
    outage_calls=6,
    sigterm_streams=3,
    fuzz_bodies=150,
    fuzz_metadata=30,
)
FULL = Sizes(
    load_callers=32,
    load_generations=15,
    storm_streams=300,
    storm_threads=8,
    stalled_callers=2,
    burst=30,
    memory_calls=90,
    replica_calls=120,
    outage_calls=30,
    sigterm_streams=6,
    fuzz_bodies=1500,
    fuzz_metadata=60,
)


def find_setting(model: type[BaseModel], word: str, prefix: str = "") -> str | None:
    """The dotted name of the first setting whose name holds `word` (sections searched too)."""
    for name, info in model.model_fields.items():
        if word in name:
            return prefix + name
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found = find_setting(annotation, word, f"{prefix}{name}.")
            if found:
                return found
    return None


def _with_setting(settings: dict[str, Any], dotted: str, value: Any) -> None:
    *sections, key = dotted.split(".")
    for section in sections:
        settings = settings.setdefault(section, {})
    settings[key] = value


def _generous_limits() -> dict[str, Any]:
    return {
        "requests_per_minute": 600000,
        "burst": 100000,
        "gpu_cost_per_minute": 1e12,
        "gpu_cost_burst": 1e12,
        "max_concurrent_generations": 2,
        "peer_requests_per_minute": 600000,
        "peer_burst": 100000,
    }


def server_configs(
    ids: Identities, sizes: Sizes, redis_url: str | None, names: set[str]
) -> dict[str, dict[str, Any]]:
    """Settings of each server in `names`: main (generous limits), limited (a small
    in-memory burst), replica-0..2 (the same burst in one Redis)."""
    base = server_settings(ids.pki, shutdown_grace_seconds=GRACE_S)
    main = {
        **base,
        "rate_limit": _generous_limits(),
        "engine": {"max_queued_jobs": sizes.max_queued_jobs},
        # Stalled readers stop mid-image: a 512x512 tiny-model PNG (~770 KiB) must span
        # several chunks, which the 1 MiB default would send as one.
        "chunk_size": 64 * 1024,
    }
    stall = stall_setting()
    if stall is not None:
        _with_setting(main, stall, STALL_TIMEOUT_S)
    small_burst = {
        **_generous_limits(),
        "burst": sizes.burst,
        "requests_per_minute": NEARLY_NO_REFILL,
    }
    configs: dict[str, dict[str, Any]] = {
        "main": main,
        "limited": {**base, "rate_limit": small_burst},
    }
    for index in range(3):
        configs[f"replica-{index}"] = {
            **base,
            "rate_limit": {**small_burst, "backend": "redis", "redis_url": redis_url or ""},
        }
    return {name: config for name, config in configs.items() if name in names}


def stall_setting() -> str | None:
    """The stalled-reader timeout setting, if this server has one."""
    return find_setting(Settings, "stall")


class ServerUnavailable(Exception):
    """A scenario's server did not start (or is gone)."""


@dataclass
class Context:
    """What every scenario gets: sizes, identities, the fleet, and seeded random sources."""

    sizes: Sizes
    seed: int
    ids: Identities
    fleet: Fleet
    directory: Path

    def random(self, purpose: str) -> random.Random:
        """A random source for `purpose`, from the run's seed: a scenario draws the same
        choices whichever scenarios ran before it (`--only`), and threads draw their own."""
        return random.Random(f"{self.seed}-{purpose}")

    def server(self, name: str) -> ServerProcess:
        """A running server by name, or ServerUnavailable saying why not."""
        server = self.fleet.servers.get(name)
        if server is None:
            raise ServerUnavailable(f"server {name} was not started")
        if server.port is None:
            raise ServerUnavailable(f"server {name} did not start: {server.start_error}")
        if not server.alive():
            raise ServerUnavailable(f"server {name} is gone (exit {server.process.returncode})")
        return server


__all__ = [
    "FULL",
    "GRACE_S",
    "SHORT",
    "STALL_TIMEOUT_S",
    "Context",
    "ServerUnavailable",
    "Sizes",
    "find_setting",
    "server_configs",
    "stall_setting",
]
