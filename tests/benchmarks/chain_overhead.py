"""Benchmark: the full security chain on a trivial RPC vs the same server bare.

Two server processes run side by side from one configuration: one with the
whole interceptor chain (audit line per call, error mapping, per-peer and
per-caller rate limits, token authentication, scope authorization), one with
no interceptors; both serve mutual TLS. Sixteen
concurrent callers (grpc.aio, one process) call ListModels on each in
pairs of rounds. Prints the median over the pairs of the p50 latency and the
throughput ratios (full / bare).

    .venv/bin/python tests/benchmarks/chain_overhead.py [--callers 16] [--seconds 3] [--rounds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import grpc.aio
from bench_server import dev_token, start_server, stop, write_config

from pixelgate.dev.pki import DevPkiFiles
from pixelgate.v1 import image_service_pb2 as pb
from pixelgate.v1 import image_service_pb2_grpc as pb_grpc


async def _serve(config: Path, with_chain: bool) -> None:
    from pixelgate.server.app import start_server
    from pixelgate.server.core.config import load_settings
    from pixelgate.server.logs.setup import configure_logging

    # As deployed: the audit line of every call is written (here to stderr, a file).
    configure_logging("INFO")
    running = await start_server(load_settings(config), interceptors=with_chain)
    print(f"pixelgate: serving on port {running.port}", flush=True)
    await asyncio.Event().wait()


async def _round(
    target: str, credentials: grpc.ChannelCredentials, callers: int, seconds: float
) -> tuple[list[float], float]:
    latencies: list[float] = []
    async with grpc.aio.secure_channel(target, credentials) as channel:
        stub = pb_grpc.ImageServiceStub(channel)
        await stub.ListModels(pb.ListModelsRequest())  # connect before timing
        stop = time.perf_counter() + seconds

        async def caller() -> None:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                await stub.ListModels(pb.ListModelsRequest())
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed = time.perf_counter() - started
    return latencies, len(latencies) / elapsed


async def _measure(args: argparse.Namespace, files: DevPkiFiles, ports: dict[str, int]) -> None:
    token = dev_token(files)
    tls = grpc.ssl_channel_credentials(
        files.ca_cert.read_bytes(), files.client_key.read_bytes(), files.client_cert.read_bytes()
    )
    credentials = grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(token))
    for name in ("bare", "full"):  # warm-up round, not counted
        await _round(f"127.0.0.1:{ports[name]}", credentials, args.callers, 1.0)
    bare_rps: list[float] = []
    throughput_ratios: list[float] = []
    latency_ratios: list[float] = []
    for index in range(args.rounds):
        # Each pair of rounds gives one ratio, so a drift in the machine's load
        # between pairs cancels out; the order within a pair alternates.
        order = ("bare", "full") if index % 2 == 0 else ("full", "bare")
        measured = {}
        for name in order:
            measured[name] = await _round(
                f"127.0.0.1:{ports[name]}", credentials, args.callers, args.seconds
            )
        (bare_latencies, bare), (full_latencies, full) = measured["bare"], measured["full"]
        bare_rps.append(bare)
        throughput_ratios.append(full / bare)
        latency_ratios.append(statistics.median(full_latencies) / statistics.median(bare_latencies))
    print(
        f"ListModels, {args.callers} concurrent callers, {args.rounds} pairs of rounds of "
        f"{args.seconds:g} s, mTLS on both; medians over the pairs (range)"
    )
    print(f"  bare server: {statistics.median(bare_rps):.0f} calls/s (baseline)")
    for what, ratios in (("p50 latency", latency_ratios), ("throughput", throughput_ratios)):
        print(
            f"  full chain / bare: {what} ratio {statistics.median(ratios):.3f} "
            f"({min(ratios):.3f}-{max(ratios):.3f})"
        )


def main() -> None:
    """Starts both servers, measures, prints ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--serve", choices=["full", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.config, args.serve == "full"))
        return

    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        processes: list[subprocess.Popen[str]] = []
        config, files = write_config(directory)
        try:
            ports = {}
            for name in ("full", "bare"):
                process, ports[name] = start_server(
                    config, [sys.executable, __file__, "--serve", name]
                )
                processes.append(process)
            asyncio.run(_measure(args, files, ports))
        finally:
            for process in processes:
                stop(process)


if __name__ == "__main__":
    main()
