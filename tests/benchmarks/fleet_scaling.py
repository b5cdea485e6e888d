"""Benchmark: fleet scaling. Throughput of 1, 2 and 3 replicas behind one client target,
on a SIMULATED device.

Three real server processes run from one configuration (mTLS, token auth, limits in a
shared Redis when `redis-server` is installed, one job per pipeline call), each on a
simulated device (simulated_device.py): the tiny pipeline plus a sleep in every
denoising step, so a step takes device time but little host CPU, as on a GPU host.
Without it the replicas would share this machine's cores and the figure would measure
them, not the fleet machinery (the client's round_robin over one multi-address target,
client-side health checking, each replica's queue and engine).

Callers (one client and one caller each, all with the same target) generate images
one after another for a fixed time; the throughput is the steady rate of completions
once the queues are full (first to last completion after the ramp-up), so a batch's
uneven tail does not weigh on it. A round measures 1, 2 and 3 replicas in turn, the
target naming the first 1, 2 or 3, and the order alternates from round to round
(1-2-3, then 3-2-1), so a drift in this machine's load cancels out of the round's
ratios. Each ratio is the throughput of 2 (or 3) replicas over that of 1 in the same
round; the report gives their median and range over the rounds, and how busy the
host's CPUs were (so a ratio capped by the host shows as such).

    .venv/bin/python tests/benchmarks/fleet_scaling.py [--step-seconds 0.1] [--steps 8]
        [--callers 12] [--seconds 12] [--ramp-up 2] [--rounds 3] [--no-redis]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench_server import cpu_seconds, dev_token, start_server, stop, write_config
from simulated_device import STEP_SECONDS_VARIABLE

from pixelgate.client import DeadlineExceeded, PixelgateClient
from pixelgate.dev.pki import DevPkiFiles

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: processes.py
from processes import RedisServer

REPLICAS = 3
LAUNCHER = Path(__file__).with_name("simulated_device.py")


@dataclass
class Round:
    """One fleet size's measurement in one round."""

    replicas: int
    throughput: float
    """Images per second in steady state: completions after the ramp-up, first to last."""
    cpu_busy: float
    """Host CPU time of the servers and the callers over wall time, per core (0..1)."""


def _fleet_client(files: DevPkiFiles, ports: Sequence[int], subject: str) -> PixelgateClient:
    return PixelgateClient(
        ",".join(f"127.0.0.1:{port}" for port in ports),
        ca_file=files.ca_cert,
        cert_file=files.client_cert,
        key_file=files.client_key,
        token=dev_token(files, subject),
    )


def _measure(
    clients: Sequence[PixelgateClient],
    pids: Sequence[int],
    replicas: int,
    steps: int,
    seconds: float,
    ramp_up: float,
) -> Round:
    """Every caller generates images one after another for `seconds`; the rate counts the
    completions after `ramp_up` (queues filled), so neither the start nor the end of the
    window (calls cut off by their deadline, not counted) weighs on it."""
    started = time.monotonic()
    deadline = started + seconds

    def caller(index: int) -> list[float]:
        done: list[float] = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                clients[index].generate("a fleet", steps=steps, seed=index, timeout=left)
            except DeadlineExceeded:
                break  # cut off, or refused by admission as unable to finish in time
            done.append(time.monotonic())
        return done

    cpu_before = sum(cpu_seconds(pid) for pid in pids) + sum(os.times()[:2])
    with ThreadPoolExecutor(len(clients)) as pool:
        finished = sorted(t for times in pool.map(caller, range(len(clients))) for t in times)
    wall = time.monotonic() - started
    cpu = sum(cpu_seconds(pid) for pid in pids) + sum(os.times()[:2]) - cpu_before
    steady = [t for t in finished if t >= started + ramp_up]
    if len(steady) < 2:
        raise RuntimeError(f"{len(steady)} images in steady state: lengthen --seconds")
    throughput = (len(steady) - 1) / (steady[-1] - steady[0])
    return Round(replicas, throughput, cpu / wall / (os.cpu_count() or 1))


def _spread(values: Sequence[float], digits: int = 2) -> str:
    return (
        f"{statistics.median(values):.{digits}f}"
        f" ({min(values):.{digits}f}-{max(values):.{digits}f})"
    )


def main() -> None:
    """Starts three simulated-device replicas, measures 1, 2 and 3 of them, prints ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-seconds", type=float, default=0.1, help="simulated per step")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per image")
    parser.add_argument("--callers", type=int, default=12, help="concurrent callers")
    parser.add_argument("--seconds", type=float, default=12.0, help="per fleet size and round")
    parser.add_argument("--ramp-up", type=float, default=2.0, help="seconds not counted")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-redis", action="store_true", help="limits in each replica")
    args = parser.parse_args()
    use_redis = not args.no_redis and shutil.which("redis-server") is not None

    results: list[Round] = []
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        redis = RedisServer(directory) if use_redis else None
        # One job per pipeline call: a replica's throughput is its device's, batching aside.
        config, files = write_config(directory, "[engine]\nmax_batch_images = 1\n")
        if redis is not None:  # write_config's [rate_limit] lifts every limit; add the backend
            text = config.read_text(encoding="utf-8")
            backend = f'[rate_limit]\nbackend = "redis"\nredis_url = "{redis.url}"\n'
            config.write_text(text.replace("[rate_limit]\n", backend, 1), encoding="utf-8")
        os.environ[STEP_SECONDS_VARIABLE] = str(args.step_seconds)
        os.environ["OMP_NUM_THREADS"] = "1"  # one intra-op thread per replica, as in the tests
        # Build the tiny model into the cache once, before three processes want it.
        subprocess.run(
            [sys.executable, "-m", "pixelgate.server", "--config", str(config), "--prepare-model"],
            check=True,
        )
        command = [sys.executable, str(LAUNCHER)]
        servers: list[subprocess.Popen[str]] = []
        try:
            with ThreadPoolExecutor(REPLICAS) as pool:
                started = list(
                    pool.map(
                        lambda i: start_server(config, command, name=f"replica-{i}"),
                        range(REPLICAS),
                    )
                )
            servers = [server for server, _ in started]
            ports = [port for _, port in started]
            pids = [server.pid for server in servers]
            fleets = {
                n: [_fleet_client(files, ports[:n], f"caller-{i}") for i in range(args.callers)]
                for n in range(1, REPLICAS + 1)
            }
            for clients in fleets.values():  # warm-up: every channel connected to its replicas
                _measure(clients, pids, 0, 1, 2.0, 0.0)
            for index in range(args.rounds):
                order = range(1, REPLICAS + 1) if index % 2 == 0 else range(REPLICAS, 0, -1)
                for n in order:
                    results.append(
                        _measure(fleets[n], pids, n, args.steps, args.seconds, args.ramp_up)
                    )
            for clients in fleets.values():
                for each in clients:
                    each.close()
        finally:
            for server in servers:
                stop(server)
            if redis is not None:
                redis.stop()

    device_seconds = args.steps * args.step_seconds
    print(
        f"SIMULATED DEVICE: the tiny pipeline plus {args.step_seconds * 1000:.0f} ms of sleep per"
        f" denoising step ({args.steps} steps: {device_seconds:.2f} s of device time per image);"
        " not a GPU, not this host's compute"
    )
    print(
        f"{args.callers} callers generating one image after another for {args.seconds:.0f} s"
        f" (the first {args.ramp_up:.0f} s not counted), one client target naming"
        f" 1, 2 or 3 replicas (round_robin), one job per pipeline call, limits in"
        f" {'one shared Redis' if use_redis else 'each replica'}; {args.rounds} rounds,"
        " order alternating"
    )
    ideal = 1 / device_seconds
    for n in range(1, REPLICAS + 1):
        mine = [r for r in results if r.replicas == n]
        print(
            f"  {n} replica{'s' if n > 1 else ' '}: {_spread([r.throughput for r in mine])}"
            f" images/s (device-bound ideal {n * ideal:.2f}),"
            f" host CPU busy {_spread([r.cpu_busy * 100 for r in mine], 0)} %"
        )
    for n in range(2, REPLICAS + 1):
        ratios = [
            mine.throughput / one.throughput
            for mine, one in zip(
                [r for r in results if r.replicas == n],
                [r for r in results if r.replicas == 1],
                strict=True,
            )
        ]
        print(f"  scaling {n}/1, median (range): {_spread(ratios)}x (ideal {n}.00x)")


if __name__ == "__main__":
    main()
