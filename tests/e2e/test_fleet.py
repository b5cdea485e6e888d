"""A fleet of three real `pixelgate-server` processes sharing one real Redis, one client target.

The replicas run on loopback with `rate_limit.backend = "redis"`; every call goes
through the client library with one target listing all three (gRPC's round_robin,
client-side health checking and service-config retries). Each replica writes its
own audit file, so the lines say which replica answered which call (the seed
tells calls apart). The replicas are shared by the module; the tests that stop
one (SIGKILL, SIGTERM) come last and take a replica nobody needs after them.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from processes import RedisServer, ServerProcess, server_settings, write_config

from pixelgate.client import (
    GeneratedImage,
    PixelgateClient,
    PixelgateError,
    RateLimited,
    Unavailable,
)
from pixelgate.dev.pki import DevPkiFiles
from pixelgate.server.models.runtime import ModelRuntime
from pixelgate.v1 import image_service_pb2 as pb

pytestmark = pytest.mark.timeout(120)

REPLICAS = 3
START_TIMEOUT_S = 120.0
"""Three processes importing torch and loading the model at once on a small CPU box."""
BURST = 30
"""Each caller's calls fleet-wide (the rate refills by one every 100 minutes)."""
MAX_CONCURRENT = 3
"""Each caller's generations queued or running at once, fleet-wide."""
LEASE_S = 2.0
"""A concurrency slot's lease (its minimum is 1 s)."""
GRACE_S = 20.0
"""shutdown_grace_seconds: far more than a running generation needs."""
LONG_STEPS = 40
"""Denoising steps of a generation that is still running while the test acts."""
LONGER_STEPS = 100
"""Steps of a generation that must outlast the spread of several calls' starts."""
LONG_SIZE = 128
"""Width and height of a generation that must still run when the test stops its replica
(a step costs four times a 64x64 one: about 2 s for LONGER_STEPS on an idle core)."""
TIMEOUT = 60.0
CONCURRENT_LISTS = 6
"""ListModels calls at once: enough for a replica to hold several Redis connections."""


def _read_audit(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    whole = text[: text.rfind("\n") + 1]  # a batch may be half written
    return [json.loads(line) for line in whole.splitlines() if line.strip()]


@dataclass
class Replica:
    """One server process of the fleet and its audit file."""

    process: ServerProcess
    audit_path: Path

    @property
    def target(self) -> str:
        return self.process.target

    def calls(self, subject: str, method: str = "GenerateImage") -> list[dict[str, Any]]:
        """This replica's audit lines for `subject`'s calls of `method`."""
        return [
            entry
            for entry in _read_audit(self.audit_path)
            if entry["method"].endswith(f"/{method}")
            and (entry["principal"] or {}).get("sub") == subject
        ]


class Fleet:
    """The module's replicas, its Redis, and clients to them."""

    def __init__(self, replicas: list[Replica], redis: RedisServer, pki: DevPkiFiles, mint: Any):
        self.replicas = replicas
        self.redis = redis
        self._pki = pki
        self._mint = mint
        self._clients: list[PixelgateClient] = []

    def alive(self) -> list[Replica]:
        return [replica for replica in self.replicas if replica.process.alive()]

    def client(
        self, subject: str, replicas: Sequence[Replica] | None = None, attempts: int = 3
    ) -> PixelgateClient:
        """A client for `subject` whose one target lists `replicas` (default: the live ones)."""
        chosen = self.alive() if replicas is None else replicas
        client = PixelgateClient(
            ",".join(replica.target for replica in chosen),
            ca_file=self._pki.ca_cert,
            cert_file=self._pki.client_cert,
            key_file=self._pki.client_key,
            token=self._mint(subject=subject),
            attempts=attempts,
        )
        self._clients.append(client)
        return client

    def close_clients(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()


@pytest.fixture(scope="module")
def fleet(
    pki: DevPkiFiles,
    mint: Callable[..., str],
    model_cache: Path,
    tiny_model: ModelRuntime,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Fleet]:
    """Three replicas sharing a Redis of this module's own (a test stops and restarts it)."""
    del tiny_model  # requested so the model is already in model_cache: the replicas load it
    directory = tmp_path_factory.mktemp("fleet")
    redis = RedisServer(directory)
    replicas: list[Replica] = []
    try:
        for index in range(REPLICAS):
            audit_path = directory / f"replica-{index}.audit.jsonl"
            settings = server_settings(
                pki,
                cache_dir=model_cache,
                shutdown_grace_seconds=GRACE_S,
                audit={"destination": str(audit_path)},
                # One job per pipeline call: two calls on one replica queue, one behind the other.
                engine={"max_batch_images": 1},
                rate_limit={
                    "backend": "redis",
                    "redis_url": redis.url,
                    # The default: a loaded 2-core box can take 0.2 s to answer.
                    "redis_timeout_seconds": 0.5,
                    "redis_probe_interval_seconds": 0.2,
                    "requests_per_minute": 0.01,
                    "burst": BURST,
                    "gpu_cost_per_minute": 1e9,
                    "gpu_cost_burst": 1e9,
                    "max_concurrent_generations": MAX_CONCURRENT,
                    "slot_lease_seconds": LEASE_S,
                },
            )
            config = write_config(directory / f"replica-{index}.toml", settings)
            process = ServerProcess(config, directory, f"replica-{index}")
            replicas.append(Replica(process, audit_path))
        for replica in replicas:
            replica.process.wait_serving(START_TIMEOUT_S)
        fleet = Fleet(replicas, redis, pki, mint)
        yield fleet
        fleet.close_clients()
    finally:
        for replica in replicas:
            replica.process.stop(grace=0)
        redis.stop()


@pytest.fixture
def fresh(fleet: Fleet) -> Iterator[Fleet]:
    """The fleet with Redis emptied (every caller's budget full) and this test's clients
    closed after it."""
    fleet.redis.flush()
    yield fleet
    fleet.close_clients()


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s")
        time.sleep(0.05)


def _seed(entry: dict[str, Any]) -> int | None:
    """The seed an audit line's call asked for; None for an attempt refused before its
    request was read (a slow Redis on a loaded box), which the channel tried again."""
    return (entry["request"] or {}).get("seed")


def _per_replica(
    replicas: Sequence[Replica], subject: str, method: str, total: int
) -> list[list[dict[str, Any]]]:
    """Each replica's audit lines for the subject's `method` calls, once `total` are in."""
    _wait_for(
        lambda: sum(len(r.calls(subject, method)) for r in replicas) >= total,
        10,
        f"{total} {method} audit lines",
    )
    return [replica.calls(subject, method) for replica in replicas]


@dataclass
class Outcome:
    """How one generation ended, seen by its caller."""

    seed: int
    error: PixelgateError | None = None
    first_event_at: float | None = None
    ended_at: float = 0.0
    images: int = 0
    steps_seen: int = 0
    last_step_at: float | None = None
    """When its last denoising step was seen: its concurrency slot was still held then."""


def _generate(
    client: PixelgateClient,
    seed: int,
    steps: int,
    started: threading.Event | None = None,
    size: int = 64,
) -> Outcome:
    """Streams one generation to its end; `started` is set at its first denoising step."""
    outcome = Outcome(seed)
    try:
        for event in client.stream(
            "a fleet", steps=steps, seed=seed, width=size, height=size, timeout=TIMEOUT
        ):
            if outcome.first_event_at is None:
                outcome.first_event_at = time.monotonic()
            if isinstance(event, GeneratedImage):
                outcome.images += 1
            elif event.state == pb.Progress.STATE_RUNNING and event.step >= 1:
                outcome.steps_seen = max(outcome.steps_seen, event.step)
                outcome.last_step_at = time.monotonic()
                if started is not None:
                    started.set()
    except PixelgateError as error:
        outcome.error = error
    outcome.ended_at = time.monotonic()
    return outcome


def _start_together(
    client: PixelgateClient,
    seeds: Sequence[int],
    steps: int,
    pool: ThreadPoolExecutor,
    size: int = 64,
) -> tuple[list[Any], list[threading.Event]]:
    started = [threading.Event() for _ in seeds]
    futures = [
        pool.submit(_generate, client, seed, steps, event, size)
        for seed, event in zip(seeds, started, strict=True)
    ]
    return futures, started


def _health_checks(replica: Replica) -> int:
    return sum(
        e["method"] == "/grpc.health.v1.Health/Check" for e in _read_audit(replica.audit_path)
    )


def _warm(client: PixelgateClient, replicas: Sequence[Replica]) -> None:
    """Health-checks through the client until every replica answered one: round_robin has
    them all ready (connected, health SERVING) before the test's calls. Health checks need
    no token and cost the caller nothing."""
    before = [_health_checks(replica) for replica in replicas]

    def every_replica_answered() -> bool:
        assert client.health() == "SERVING"
        return all(_health_checks(r) > n for r, n in zip(replicas, before, strict=True))

    _wait_for(every_replica_answered, 10, "health checks answered by every replica")


def test_calls_spread_over_all_three_replicas(fresh: Fleet) -> None:
    """Calls through the one target reach every replica."""
    client = fresh.client("spread")
    _warm(client, fresh.replicas)
    for seed in range(6):
        [image] = client.generate("a fleet", steps=1, seed=seed, timeout=TIMEOUT)
        assert image.steps == 1
    per_replica = _per_replica(fresh.replicas, "spread", "GenerateImage", 6)
    assert all(per_replica), [len(calls) for calls in per_replica]
    assert {e["status"] for calls in per_replica for e in calls} == {"OK"}


def test_one_rate_budget_for_the_whole_fleet(fresh: Fleet) -> None:
    """A caller with a burst of BURST gets exactly BURST calls through the fleet, spread over
    the three replicas (per replica it would be three times as many); the rest are
    RESOURCE_EXHAUSTED, each tried once."""
    client = fresh.client("budget")
    _warm(client, fresh.replicas)
    admitted = refused = 0
    for _ in range(2 * BURST):
        try:
            client.list_models(timeout=TIMEOUT)
            admitted += 1
        except RateLimited:
            refused += 1
    assert (admitted, refused) == (BURST, BURST)
    per_replica = _per_replica(fresh.replicas, "budget", "ListModels", 2 * BURST)
    ok = [sum(e["status"] == "OK" for e in calls) for calls in per_replica]
    assert sum(ok) == BURST and all(ok), ok  # each replica admitted some of the one budget
    assert sum(len(calls) for calls in per_replica) == 2 * BURST  # no refusal was retried


def _most_at_once(outcomes: Sequence[Outcome]) -> int:
    """The most generations seen running at once: from a call's first event (its slot was
    taken before) to its last step (its slot is given back after)."""
    changes = sorted(
        [(o.first_event_at, 1) for o in outcomes if o.first_event_at and o.last_step_at]
        + [(o.last_step_at, -1) for o in outcomes if o.first_event_at and o.last_step_at]
    )
    running = most = 0
    for _, change in changes:  # at a tie, -1 sorts first: an end before a start
        running += change
        most = max(most, running)
    return most


def test_one_concurrency_cap_for_the_whole_fleet(fresh: Fleet) -> None:
    """Eight generations at once from one caller over three replicas: never more than
    MAX_CONCURRENT run at once, fleet-wide (caps of each replica's own would let all eight
    run), and the rest are refused with RESOURCE_EXHAUSTED; the same again in a second wave
    (every slot came back)."""
    client = fresh.client("concurrency")
    _warm(client, fresh.replicas)
    calls = 8
    with ThreadPoolExecutor(calls) as pool:
        for wave in range(2):
            seeds = [wave * 100 + i for i in range(calls)]
            futures, _ = _start_together(client, seeds, LONGER_STEPS, pool)
            outcomes = [future.result(timeout=TIMEOUT) for future in futures]
            ran = [o for o in outcomes if o.error is None]
            refused = [o for o in outcomes if o.error is not None]
            assert all(o.images == 1 and o.steps_seen == LONGER_STEPS for o in ran)
            seen = [(o.seed, o.error, o.first_event_at is not None) for o in outcomes]
            assert refused and all(isinstance(o.error, RateLimited) for o in refused), seen
            assert _most_at_once(ran) == MAX_CONCURRENT, [(o.seed, o.error) for o in outcomes]
            # Each replica had some of the eight: caps of their own would have let all run.
            _wait_for(
                lambda seeds=seeds: (
                    {_seed(e) for r in fresh.replicas for e in r.calls("concurrency")} >= set(seeds)
                ),
                10,
                "an audit line per call",
            )
            this_wave = [
                [e for e in replica.calls("concurrency") if _seed(e) in seeds]
                for replica in fresh.replicas
            ]
            assert all(this_wave), [len(lines) for lines in this_wave]
            _wait_for(  # an OK line follows its call's end by a batch interval
                lambda ran=ran, seeds=seeds: (
                    sum(
                        e["status"] == "OK" and _seed(e) in seeds
                        for r in fresh.replicas
                        for e in r.calls("concurrency")
                    )
                    == len(ran)
                ),
                10,
                "an audit line per admitted call",
            )


def test_redis_down_fails_closed_on_every_replica_and_recovers_without_restarts(
    fresh: Fleet,
) -> None:
    """Redis killed: every replica refuses tokened calls with UNAVAILABLE, promptly, and its
    health says NOT_SERVING; Redis back (empty, same port): every replica serves again,
    the same processes, and no call is refused for a connection Redis dropped."""
    pids = [replica.process.pid for replica in fresh.replicas]
    direct = [fresh.client("outage", [replica]) for replica in fresh.replicas]
    fleet_client = fresh.client("outage")
    with ThreadPoolExecutor(CONCURRENT_LISTS) as pool:
        for client in direct:  # several calls at once: each replica opens several connections
            assert all(_lists_at_once(client, pool))
    fresh.redis.kill()
    try:
        for client in direct:
            _wait_for(
                lambda client=client: client.health() == "NOT_SERVING",
                5,
                "health NOT_SERVING",
            )
            assert client.health("pixelgate.v1.ImageService") == "NOT_SERVING"
            for call in (
                lambda client=client: client.list_models(timeout=TIMEOUT),
                lambda client=client: client.generate("a fleet", steps=1, timeout=TIMEOUT),
            ):
                asked = time.monotonic()
                with pytest.raises(Unavailable):
                    call()
                assert time.monotonic() - asked < 3.0
        asked = time.monotonic()
        with pytest.raises(Unavailable):  # through the fleet target: no replica to go to
            fleet_client.generate("a fleet", steps=1, timeout=TIMEOUT)
        assert time.monotonic() - asked < 5.0
    finally:
        fresh.redis.start()
    for client in direct:
        _wait_for(lambda client=client: client.health() == "SERVING", 5, "health SERVING")
    # No retries: a call refused on a connection the old Redis left behind would show.
    once = [fresh.client("outage-after", [replica], attempts=1) for replica in fresh.replicas]
    with ThreadPoolExecutor(CONCURRENT_LISTS) as pool:
        for client in once:
            assert all(_lists_at_once(client, pool))
            [image] = client.generate("a fleet", steps=1, seed=1, timeout=TIMEOUT)
            assert image.steps == 1
    [image] = fleet_client.generate("a fleet", steps=1, seed=2, timeout=TIMEOUT)
    assert image.steps == 1
    assert [replica.process.pid for replica in fresh.replicas] == pids
    assert all(replica.process.alive() for replica in fresh.replicas)


def _lists_at_once(client: PixelgateClient, pool: ThreadPoolExecutor) -> list[bool]:
    """CONCURRENT_LISTS ListModels calls at once; whether each succeeded."""

    def listed() -> bool:
        try:
            return bool(client.list_models(timeout=TIMEOUT))
        except Unavailable:
            return False

    return list(pool.map(lambda _: listed(), range(CONCURRENT_LISTS)))


def test_a_replica_killed_mid_load_loses_only_its_running_calls(fresh: Fleet) -> None:
    """SIGKILL to a replica while each replica runs one of the caller's generations: only the
    killed replica's call fails, promptly; the others finish; new calls go to the survivors,
    and the dead replica's concurrency slot comes back within the lease."""
    *survivors, victim = fresh.alive()
    client = fresh.client("kill")
    _warm(client, fresh.alive())
    with ThreadPoolExecutor(MAX_CONCURRENT) as pool:
        futures, started = _start_together(client, [1, 2, 3], LONGER_STEPS, pool, LONG_SIZE)
        for event in started:
            assert event.wait(TIMEOUT), "a generation never started denoising"
        victim.process.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        outcomes = [future.result(timeout=TIMEOUT) for future in futures]
    failed = [o for o in outcomes if o.error is not None]
    assert failed, "no call ran on the killed replica"
    for outcome in outcomes:
        if outcome.error is None:
            assert outcome.images == 1
        else:  # it ran on the victim: no survivor saw it, and it failed at once
            assert isinstance(outcome.error, Unavailable), outcome.error
            assert outcome.ended_at - killed_at < 3.0
    succeeded = {o.seed for o in outcomes if o.error is None}
    on_survivors = _per_replica(survivors, "kill", "GenerateImage", len(succeeded))
    assert {
        (_seed(e), e["status"]) for lines in on_survivors for e in lines if _seed(e) is not None
    } == {(seed, "OK") for seed in succeeded}, [(o.seed, o.error) for o in outcomes]

    # The caller holds MAX_CONCURRENT generations at once again within the lease: the
    # dead replica's slot lapsed (the survivors released theirs as their calls ended).
    seeds = iter(range(100, 200))
    with ThreadPoolExecutor(MAX_CONCURRENT) as pool:
        while True:
            batch = [next(seeds) for _ in range(MAX_CONCURRENT)]
            futures, _ = _start_together(client, batch, LONG_STEPS, pool)
            again = [future.result(timeout=TIMEOUT) for future in futures]
            if all(o.error is None for o in again):
                break
            assert all(isinstance(o.error, RateLimited) for o in again if o.error), again
            assert time.monotonic() - killed_at < LEASE_S + 3.0, "the slot never came back"
            time.sleep(0.25)
    assert time.monotonic() - killed_at < LEASE_S + 3.0


def test_a_replica_drained_with_sigterm_loses_no_call(fresh: Fleet) -> None:
    """SIGTERM to a replica running one generation with others queued behind it: the
    running one finishes there, the queued ones and every new call go to another replica;
    nothing fails, and the drained replica exits 0 within its grace."""
    alive = sorted(fresh.alive(), key=lambda r: r.target)
    assert len(alive) >= 2
    victim = alive[0]
    # Three callers, each with a call on every replica (round_robin): on each replica one
    # call runs (the first caller's, long) and two wait behind it (one job a batch).
    subjects = ("drain", "drain-too", "drain-three")
    callers = [fresh.client(subject) for subject in subjects]
    late = fresh.client("drain-late")
    for client in (*callers, late):
        _warm(client, alive)
    with ThreadPoolExecutor(len(callers) * len(alive) + MAX_CONCURRENT) as pool:
        futures, started = [], []
        for index, client in enumerate(callers):
            seeds = [index * 10 + i for i in range(len(alive))]
            steps, size = (LONGER_STEPS, LONG_SIZE) if index == 0 else (LONG_STEPS, 64)
            more, events = _start_together(client, seeds, steps, pool, size)
            futures += more
            started += events
        _wait_for(lambda: sum(e.is_set() for e in started) >= len(alive), TIMEOUT, "runs")
        victim.process.signal(signal.SIGTERM)
        termed_at = time.monotonic()
        # New calls at once, as the replica begins to stop, then more one by one.
        later = [pool.submit(_generate, late, 100 + i, 2) for i in range(MAX_CONCURRENT)]
        outcomes = [future.result(timeout=TIMEOUT) for future in futures + later]
        outcomes += [_generate(late, 200 + i, 2) for i in range(3)]
    failed = [(o.seed, o.error) for o in outcomes if o.error is not None]
    assert not failed, failed
    assert all(o.images == 1 for o in outcomes)
    assert victim.process.wait_exit(GRACE_S) == 0
    assert time.monotonic() - termed_at < GRACE_S
    there = [e["status"] for s in subjects for e in victim.calls(s) if _seed(e) is not None]
    assert "OK" in there, "the drained replica ran nothing to the end"
    assert "UNAVAILABLE" in there, "no queued call was sent away (and resubmitted)"
    assert not victim.calls("drain-late", "GenerateImage") or {
        e["status"] for e in victim.calls("drain-late")
    } == {"UNAVAILABLE"}, "a call made after SIGTERM ran on the draining replica"
