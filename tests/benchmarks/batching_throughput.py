"""Benchmark: dynamic batching. Eight concurrent compatible requests vs the same eight one by one.

Both run against the same server process (defaults: up to 8 images per
pipeline call), in alternating rounds, through the real client over mTLS.
Prints the throughput ratio (one-by-one time over concurrent time); a
control server with batching off (max_batch_images = 1) shows how much of
the gain is batching rather than overlap.

    .venv/bin/python tests/benchmarks/batching_throughput.py [--size 64] [--steps 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_server import client, start_server, stop, write_config

REQUESTS = 8


def _one_by_one(clients: list, size: int, steps: int) -> float:
    started = time.perf_counter()
    for index, each in enumerate(clients):
        each.generate("a lighthouse", width=size, height=size, steps=steps, seed=index)
    return time.perf_counter() - started


def _concurrent(clients: list, size: int, steps: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(len(clients)) as pool:
        futures = [
            pool.submit(each.generate, "a lighthouse", width=size, height=size, steps=steps, seed=i)
            for i, each in enumerate(clients)
        ]
        for future in futures:
            future.result()
    return time.perf_counter() - started


def main() -> None:
    """Measures both ways on a batching server and on a control without batching."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, batch in (("batching", 8), ("control, batching off", 1)):
            directory = Path(scratch) / str(batch)
            config, files = write_config(directory, f"[engine]\nmax_batch_images = {batch}\n")
            server, port = start_server(config)
            try:
                # One client (and caller) per request, as eight services would call.
                clients = [client(files, port, subject=f"caller-{i}") for i in range(REQUESTS)]
                _one_by_one(clients[:2], args.size, args.steps)  # warm-up
                ratios = []
                for _ in range(args.rounds):
                    sequential = _one_by_one(clients, args.size, args.steps)
                    concurrent = _concurrent(clients, args.size, args.steps)
                    ratios.append(sequential / concurrent)
                results[name] = ratios
                for each in clients:
                    each.close()
            finally:
                stop(server)

    print(
        f"{REQUESTS} requests of {args.size}x{args.size}, {args.steps} steps;"
        f" {args.rounds} rounds of one-by-one vs concurrent, same server"
    )
    for name, ratios in results.items():
        median = statistics.median(ratios)
        print(
            f"  {name}: throughput ratio concurrent / one-by-one, median {median:.2f}"
            f" (min {min(ratios):.2f}, max {max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
