"""`make prove`: start real servers, run every scenario, scan the logs, print one line each.

Exits 0 only when every scenario and the log scan pass.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from . import (
    cancellation,
    load,
    log_scan,
    malformed,
    rate_limits,
    redis_outage,
    shutdown,
    stalled,
    tls_negatives,
)
from .fleet import Fleet
from .identity import Identities
from .plan import FULL, GRACE_S, SHORT, Context, ServerUnavailable, server_configs
from .report import Outcome

REPLICAS = {"replica-0", "replica-1", "replica-2"}


@dataclass(frozen=True)
class Scenario:
    """A named check, the servers it needs, and the function that runs it."""

    name: str
    run: Callable[[Context, Outcome], None]
    servers: frozenset[str]


SCENARIOS = (
    Scenario("load", load.run, frozenset({"main"})),
    Scenario("cancel-storm", cancellation.run, frozenset({"main"})),
    Scenario("stalled-readers", stalled.run, frozenset({"main"})),
    Scenario("ratelimit-memory", rate_limits.run_memory, frozenset({"limited"})),
    Scenario("ratelimit-redis", rate_limits.run_replicas, frozenset(REPLICAS)),
    Scenario("redis-outage", redis_outage.run, frozenset({"replica-0", "replica-1"})),
    Scenario("malformed", malformed.run, frozenset({"main"})),
    Scenario("tls-negatives", tls_negatives.run, frozenset({"main"})),
    Scenario("sigterm", shutdown.run, frozenset({"main"})),  # last: it stops main
)

SCENARIO_BUDGET_S = {"short": 90.0, "full": 400.0}
"""A scenario running longer than this fails (its calls all carry deadlines too)."""

RUN_BUDGET_S = {"short": 300.0, "full": 1200.0}
"""The watchdog interrupts the whole run after this, and kills everything 30 s later."""


class Watchdog:
    """Interrupts the run when it overruns; kills every child if even that does not end it."""

    def __init__(self, seconds: float, fleet: Fleet) -> None:
        self._done = threading.Event()
        self._seconds = seconds
        self._fleet = fleet
        threading.Thread(target=self._watch, name="prove-watchdog", daemon=True).start()

    def _watch(self) -> None:
        if self._done.wait(self._seconds):
            return
        print(f"prove: watchdog: the run passed {self._seconds:.0f} s; interrupting", flush=True)
        os.kill(os.getpid(), signal.SIGINT)  # a real signal wakes blocking waits
        if not self._done.wait(30):
            print("prove: watchdog: still running; killing every process", flush=True)
            self._fleet.kill_all()
            os._exit(3)

    def cancel(self) -> None:
        """The run is over."""
        self._done.set()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="make prove", description="pixelgate's proof suite: real servers, hostile clients."
    )
    parser.add_argument("--short", action="store_true", help="the CI size (about 2 minutes)")
    parser.add_argument("--seed", type=int, default=1, help="seed of every random choice")
    parser.add_argument("--only", help="comma-separated scenarios to run (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the logs even when green")
    args = parser.parse_args(argv)
    names = [s.name for s in SCENARIOS]
    if args.only:
        unknown = sorted(set(args.only.split(",")) - set(names))
        if unknown:
            parser.error(f"unknown scenarios {unknown}; choose from {names}")
    return args


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Runs the suite; 0 when everything passed."""
    args = _parse(argv)
    mode = "short" if args.short else "full"
    sizes = SHORT if args.short else FULL
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only.split(",")]
    needed = set().union(*(s.servers for s in chosen))
    signal.signal(signal.SIGTERM, _terminated)  # CI's timeout: stop the children first

    directory = Path(tempfile.mkdtemp(prefix="pixelgate-prove-"))
    fleet = Fleet(directory)
    watchdog = Watchdog(RUN_BUDGET_S[mode], fleet)
    outcomes: list[Outcome] = []
    marks: list[log_scan.Mark] = []
    started = time.monotonic()
    ids: Identities | None = None
    try:
        ids = Identities(directory)
        redis_url = fleet.start_redis().url if needed & REPLICAS else None
        took = fleet.start_servers(server_configs(ids, sizes, redis_url, needed))
        up = sum(server.port is not None for server in fleet.servers.values())
        print(
            f"prove: {mode} mode, seed {args.seed}, {up}/{len(needed)} servers up in"
            f" {took:.1f} s, logs in {directory}",
            flush=True,
        )
        context = Context(sizes=sizes, seed=args.seed, ids=ids, fleet=fleet, directory=directory)
        for scenario in chosen:
            marks.append(log_scan.mark(scenario.name, fleet.servers.values()))
            outcomes.append(_run_one(scenario, context, SCENARIO_BUDGET_S[mode]))
            print(outcomes[-1].line(), flush=True)
        marks.append(log_scan.mark("shutdown", fleet.servers.values()))
    except KeyboardInterrupt as interrupt:
        interrupted = Outcome("interrupted")
        interrupted.fail(f"the run was interrupted ({interrupt or 'SIGINT'})")
        outcomes.append(interrupted)
        print(interrupted.line(), flush=True)
    finally:
        fleet.close(grace=GRACE_S + 15)  # the grace, the teardown, a busy machine
        watchdog.cancel()

    if ids is not None:
        logs = Outcome("logs")
        scan_started = time.monotonic()
        log_scan.scan(list(fleet.servers.values()), ids, marks, logs)
        logs.seconds = time.monotonic() - scan_started
        outcomes.append(logs)
        print(logs.line(), flush=True)
    return _summary(outcomes, args, directory, time.monotonic() - started)


def _run_one(scenario: Scenario, context: Context, budget: float) -> Outcome:
    out = Outcome(scenario.name)
    started = time.monotonic()
    try:
        scenario.run(context, out)
    except ServerUnavailable as error:
        out.fail(str(error))
    except Exception as error:
        traceback.print_exc()  # the prover's own fault: its stack goes to stderr
        out.fail(f"prover error {type(error).__name__}: {error}")
    out.seconds = time.monotonic() - started
    out.check(out.seconds <= budget, f"took {out.seconds:.0f} s, over its {budget:.0f} s budget")
    return out


def _summary(
    outcomes: list[Outcome], args: argparse.Namespace, directory: Path, seconds: float
) -> int:
    failed = [o.name for o in outcomes if not o.passed]
    calls = sum(o.calls for o in outcomes)
    print(
        f"summary: {calls} calls in {seconds:.1f} s, seed {args.seed}"
        + (f"; failed: {', '.join(failed)}; logs kept in {directory}" if failed else "")
    )
    if not failed and not args.keep:
        shutil.rmtree(directory, ignore_errors=True)
    elif not failed:
        print(f"logs kept in {directory}")
    # The closing line CI reads, alone on its line.
    print(f"prove: {len(outcomes) - len(failed)} passed, {len(failed)} failed", flush=True)
    return 1 if failed else 0
