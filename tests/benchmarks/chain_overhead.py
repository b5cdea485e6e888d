"""Benchmark: server CPU per call of the full security chain vs the same server bare.

Server processes run side by side from one configuration: "bare" with no
interceptors, and one or more chain variants (default: one, "full", the whole
chain as configured: audit line per call, error mapping, per-peer and per-caller
rate limits, token authentication, scope authorization); all serve mutual TLS.
Sixteen concurrent callers (grpc.aio, one process) call ListModels on each
server in turn, once per round, for `--rounds` rounds (default 8); the order
within a round alternates (bare first, then last), so a drift in the machine's
load between rounds cancels out of each round's ratios.

The headline is server CPU per call: utime + stime of the server process (all
threads, from /proc/<pid>/stat) read just before and just after the round,
divided by the calls it served. Client and servers share this machine's 2 cores,
so the load generator's own CPU caps throughput and latency and drowns their
ratios; CPU per call on the server does not depend on the load generator.
Throughput and p50/p99 latency are printed beside it. Each ratio is variant /
bare of the same round; the report gives their median over the rounds and their
range.

With two or more CPUs, the servers run on the first and the load generator on
the last (`--no-pin` to let them float): a server's CPU per call then does not
depend on where the scheduler put it. `--together` drives every server at once
in each round instead of one after the other, so each round's servers share the
same moment of a shared machine: its ratios spread far less from round to round
(about +-2 % here against +-15 %); but each server process keeps a bias of its
own of up to a few percent (two identical servers differed by 1-5 %), so read
small differences with that in mind.

Settings for the chain servers are dotted names as in the TOML file, passed to
the server as its PIXELGATE_ variables (so they are checked as the file's are):

    .venv/bin/python tests/benchmarks/chain_overhead.py [--callers 16] [--seconds 3] [--rounds 8]
    # every server (bare too): --set 'name=value,...'
    # the chain as deployed, metrics and tracing on:
    .venv/bin/python tests/benchmarks/chain_overhead.py \\
        --set 'metrics.enabled=true,tracing.enabled=true'
    # compare variants of the chain (each measured against bare in every round):
    .venv/bin/python tests/benchmarks/chain_overhead.py \\
        --variant 'full' --variant 'no-metrics:metrics.enabled=false'

A --variant is NAME or NAME:name=value,...; its settings go on top of --set's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
from bench_server import cpu_seconds, dev_token, parse_overrides, start_server, stop, write_config

from pixelgate.dev.pki import DevPkiFiles
from pixelgate.v1 import image_service_pb2 as pb
from pixelgate.v1 import image_service_pb2_grpc as pb_grpc

BARE = "bare"


@dataclass(frozen=True)
class Round:
    """What one server did in one round."""

    calls: int
    seconds: float
    server_cpu: float
    latencies: list[float]

    @property
    def cpu_per_call(self) -> float:
        return self.server_cpu / self.calls

    @property
    def throughput(self) -> float:
        return self.calls / self.seconds

    def latency(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass(frozen=True)
class Server:
    """A running server process under test."""

    name: str
    pid: int
    port: int


async def _serve(config: Path, with_chain: bool) -> None:
    from pixelgate.server.app import start_server
    from pixelgate.server.core.config import load_settings
    from pixelgate.server.logs.setup import configure_logging

    # As deployed: the audit line of every call is written (here to stderr, a file).
    configure_logging("INFO")
    settings = load_settings(config, environ=os.environ)
    running = await start_server(settings, interceptors=with_chain)
    print(f"pixelgate: serving on port {running.port}", flush=True)
    await asyncio.Event().wait()


async def _round(
    server: Server, credentials: grpc.ChannelCredentials, callers: int, seconds: float
) -> Round:
    latencies: list[float] = []
    async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", credentials) as channel:
        stub = pb_grpc.ImageServiceStub(channel)
        await stub.ListModels(pb.ListModelsRequest())  # connect (TLS handshake) before timing
        stop = time.perf_counter() + seconds

        async def caller() -> None:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                await stub.ListModels(pb.ListModelsRequest())
                latencies.append(time.perf_counter() - started)

        cpu_before = cpu_seconds(server.pid)
        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed = time.perf_counter() - started
        # Read before the channel closes: every counted call has been answered.
        cpu_used = cpu_seconds(server.pid) - cpu_before
    return Round(len(latencies), elapsed, cpu_used, latencies)


def _ratio_line(what: str, ratios: list[float]) -> str:
    return f"{what} {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"


async def _measure(args: argparse.Namespace, files: DevPkiFiles, servers: list[Server]) -> None:
    token = dev_token(files)
    tls = grpc.ssl_channel_credentials(
        files.ca_cert.read_bytes(), files.client_key.read_bytes(), files.client_cert.read_bytes()
    )
    credentials = grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(token))
    for server in servers:  # warm-up round, not counted
        await _round(server, credentials, args.callers, 1.0)
    rounds: dict[str, list[Round]] = {server.name: [] for server in servers}
    for index in range(args.rounds):
        if args.together:
            measured = await asyncio.gather(
                *(_round(server, credentials, args.callers, args.seconds) for server in servers)
            )
            for server, result in zip(servers, measured, strict=True):
                rounds[server.name].append(result)
            continue
        order = servers if index % 2 == 0 else servers[::-1]
        for server in order:
            rounds[server.name].append(
                await _round(server, credentials, args.callers, args.seconds)
            )

    bare = rounds[BARE]
    print(
        f"ListModels, {args.callers} concurrent callers, {args.rounds} rounds of "
        f"{args.seconds:g} s per server "
        + ("(all servers at once)" if args.together else "(order alternating)")
        + f", mTLS on all; server CPU = utime + stime of its process; {args.placement}"
    )
    if args.set:
        print(f"  settings on every server: {args.set}")
    print(
        f"  bare (baseline), medians: {statistics.median(r.cpu_per_call for r in bare) * 1e6:.0f} "
        f"us server CPU per call, {statistics.median(r.throughput for r in bare):.0f} calls/s, "
        f"p50 {statistics.median(r.latency(0.5) for r in bare) * 1e3:.2f} ms, "
        f"p99 {statistics.median(r.latency(0.99) for r in bare) * 1e3:.2f} ms"
    )
    for server in servers[1:]:
        mine = rounds[server.name]
        pairs = list(zip(mine, bare, strict=True))
        settings = args.variants[server.name]
        print(f"  {server.name} / bare" + (f" ({settings})" if settings else "") + ":")
        print(
            f"    server CPU per call: "
            f"{statistics.median(r.cpu_per_call for r in mine) * 1e6:.0f} us; "
            + _ratio_line("ratio", [m.cpu_per_call / b.cpu_per_call for m, b in pairs])
        )
        for what, ratios in (
            ("throughput ratio", [m.throughput / b.throughput for m, b in pairs]),
            ("p50 ratio", [m.latency(0.5) / b.latency(0.5) for m, b in pairs]),
            ("p99 ratio", [m.latency(0.99) / b.latency(0.99) for m, b in pairs]),
        ):
            print("    " + _ratio_line(what, ratios))


def _variants(specs: list[str]) -> dict[str, str]:
    """NAME[:settings] -> {name: settings}; "full" with no settings when none is given."""
    variants: dict[str, str] = {}
    for spec in specs or ["full"]:
        name, _, settings = spec.partition(":")
        if not name or name == BARE or name in variants:
            raise SystemExit(f"--variant: a unique name other than {BARE!r} is needed: {spec!r}")
        parse_overrides(settings)  # refuses a malformed list before anything starts
        variants[name] = settings
    return variants


def main() -> None:
    """Starts the servers, measures, prints ratios."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--set", default="", help="settings for every server: name=value,...")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="a chain server to measure: NAME or NAME:name=value,... (repeatable)",
    )
    parser.add_argument(
        "--together", action="store_true", help="drive every server at once in each round"
    )
    parser.add_argument(
        "--no-pin", dest="pin", action="store_false", help="do not pin servers and load to CPUs"
    )
    parser.add_argument("--serve", choices=["full", BARE], help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        if args.cpu is not None:  # before any thread starts: they all inherit it
            os.sched_setaffinity(0, {args.cpu})
        asyncio.run(_serve(args.config, args.serve == "full"))
        return
    cpus = sorted(os.sched_getaffinity(0))
    pinned = args.pin and len(cpus) >= 2
    args.placement = (
        f"servers on CPU {cpus[0]}, load generator on CPU {cpus[-1]}" if pinned else "not pinned"
    )
    args.variants = _variants(args.variant)
    common = parse_overrides(args.set)

    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        processes: list[subprocess.Popen[str]] = []
        config, files = write_config(directory)
        try:
            servers = []
            for name, settings in {BARE: "", **args.variants}.items():
                process, port = start_server(
                    config,
                    [
                        sys.executable,
                        __file__,
                        "--serve",
                        BARE if name == BARE else "full",
                        *(["--cpu", str(cpus[0])] if pinned else []),
                    ],
                    overrides={**common, **parse_overrides(settings)},
                    name=name,
                )
                processes.append(process)
                servers.append(Server(name, process.pid, port))
            if pinned:
                os.sched_setaffinity(0, {cpus[-1]})
            asyncio.run(_measure(args, files, servers))
        finally:
            for process in processes:
                stop(process)


if __name__ == "__main__":
    main()
