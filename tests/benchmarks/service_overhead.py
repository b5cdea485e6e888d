"""Benchmark: GenerateImage through the service vs the same pipeline called directly.

Prints the ratio of wall times (time to last byte through the service over a
direct in-process pipeline call) for one size and step count, measured in one
run with the two interleaved, so machine noise hits both alike; and the time
from sending a request to its first progress event, as a fraction of the
direct call.

    .venv/bin/python tests/benchmarks/service_overhead.py [--size 64] [--steps 20] [--runs 20]

The server runs as its own process (`python -m pixelgate.server`) with the full
chain: mutual TLS, JWT verification, scopes, rate limits, GPU quota,
validation, the engine's queue and worker, streaming of progress and image
chunks, digest check in the client.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench_server import client, start_server, stop, write_config

from pixelgate.server.api.encoding import encode_image
from pixelgate.server.core.config import ModelSettings
from pixelgate.server.core.image_format import ImageFormat
from pixelgate.server.models.runtime import PipelineBatch, load_model


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    """Runs the comparison and prints ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        config, files = write_config(directory)
        # Builds the tiny model into the cache once, for both sides.
        model = load_model(ModelSettings(), "cpu", directory / "cache")
        server, port = start_server(config)
        try:
            service_client = client(files, port)
            batch = PipelineBatch(
                prompts=("a lighthouse on a cliff",),
                negative_prompts=("",),
                seeds=(42,),
                width=args.size,
                height=args.size,
                steps=args.steps,
                guidance_scale=7.5,
            )
            first_event: list[float] = []

            def direct() -> None:
                model.run(batch, lambda step, total, latents: None)

            def direct_and_encode() -> None:
                [image] = model.run(batch, lambda step, total, latents: None)
                encode_image(image, ImageFormat.PNG)

            def service() -> None:
                started = time.perf_counter()
                events = service_client.stream(
                    batch.prompts[0], width=args.size, height=args.size, steps=args.steps, seed=42
                )
                next(events)
                first_event.append(time.perf_counter() - started)
                for _ in events:
                    pass

            cases = {"direct": direct, "direct+png": direct_and_encode, "service": service}
            for run in cases.values():  # warm-up: first-call costs are not overhead
                run()
                run()
            times: dict[str, list[float]] = {name: [] for name in cases}
            names = list(cases)
            for round_number in range(args.runs):
                # Rotate the order each round, so no case always runs first or last.
                shift = round_number % len(names)
                for name in names[shift:] + names[:shift]:
                    started = time.perf_counter()
                    cases[name]()
                    times[name].append(time.perf_counter() - started)
            service_client.close()
        finally:
            stop(server)

    base = statistics.median(times["direct"])
    print(
        f"GenerateImage {args.size}x{args.size}, {args.steps} steps, {args.runs} rounds"
        f" (each case once per round, order rotating), torch threads"
        f" {os.environ.get('OMP_NUM_THREADS', 'default')}"
    )
    print(f"  baseline: direct in-process pipeline call, median {base * 1000:.1f} ms")
    for name in ("direct+png", "service"):
        # Ratios within a round cancel the machine's slow drifts.
        ratios = sorted(t / d for t, d in zip(times[name], times["direct"], strict=True))
        print(
            f"  {name:<11} / direct: median of per-round ratios {statistics.median(ratios):.3f}"
            f" (interquartile {_percentile(ratios, 0.25):.3f}..{_percentile(ratios, 0.75):.3f}),"
            f" ratio of medians {statistics.median(times[name]) / base:.3f}"
        )
    first = statistics.median(first_event[-args.runs :])
    print(
        f"  request to first progress event (no load): median {first * 1000:.1f} ms"
        f" = {first / base:.3f} of the direct call"
    )


if __name__ == "__main__":
    main()
