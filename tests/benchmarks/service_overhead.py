"""Benchmark: GenerateImage through the service vs the same pipeline called directly.

Prints the ratio of wall times (time to last byte through the service over a
direct in-process pipeline call) for one size and step count, measured in one
run with the two interleaved, so machine noise hits both alike.

    .venv/bin/python tests/benchmarks/service_overhead.py [--size 64] [--steps 10] [--runs 20]

The server runs as its own process (`python -m pixelgate.server`) with the full
chain: mutual TLS, JWT verification, scopes, rate limiting, validation,
streaming of progress and image chunks, digest check in the client.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pixelgate.client import PixelgateClient
from pixelgate.dev import DEV_AUDIENCE, DEV_ISSUER
from pixelgate.dev.pki import write_dev_pki
from pixelgate.dev.tokens import load_signing_key, mint_access_token
from pixelgate.server.config import ModelSettings
from pixelgate.server.encoding import ImageFormat, encode_image
from pixelgate.server.generation import GenerationRequest
from pixelgate.server.models import load_model


def _config(directory: Path, cache: Path) -> Path:
    files = write_dev_pki(directory / "pki")
    config = directory / "bench.toml"
    config.write_text(
        f"""
host = "127.0.0.1"
port = 0
cache_dir = "{cache}"
[tls]
cert_file = "{files.server_cert}"
key_file = "{files.server_key}"
client_ca_file = "{files.ca_cert}"
[rate_limit]
requests_per_minute = 100000
burst = 100000
[[auth.issuers]]
issuer = "{DEV_ISSUER}"
audiences = ["{DEV_AUDIENCE}"]
public_key_files = ["{files.verification_key}"]
""",
        encoding="utf-8",
    )
    return config


def _start_server(config: Path) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pixelgate.server",
            "--config",
            str(config),
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("pixelgate: serving on port "):
            return process, int(line.rsplit(" ", 1)[1])
    raise RuntimeError("server exited before serving")


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    """Runs the comparison and prints ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        cache = directory / "cache"
        config = _config(directory, cache)
        model = load_model(ModelSettings(), cache)  # builds the tiny model once, for both sides
        server, port = _start_server(config)
        try:
            files = directory / "pki"
            token = mint_access_token(
                load_signing_key(files / "token-signing.key"), subject="bench"
            )
            client = PixelgateClient(
                f"127.0.0.1:{port}",
                ca_file=files / "ca.crt",
                cert_file=files / "client.crt",
                key_file=files / "client.key",
                token=token,
            )
            request = GenerationRequest(
                model_id=model.card.id,
                prompt="a lighthouse on a cliff",
                negative_prompt="",
                width=args.size,
                height=args.size,
                steps=args.steps,
                guidance_scale=7.5,
                seeds=(42,),
                output_format=ImageFormat.PNG,
            )

            def direct() -> None:
                model.generate(request, lambda step, total: None)

            def direct_and_encode() -> None:
                [image] = model.generate(request, lambda step, total: None)
                encode_image(image, ImageFormat.PNG)

            def service() -> None:
                client.generate(
                    request.prompt, width=args.size, height=args.size, steps=args.steps, seed=42
                )

            cases = {"direct": direct, "direct+png": direct_and_encode, "service": service}
            for run in cases.values():  # warm-up: first-call costs are not overhead
                run()
                run()
            times: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(args.runs):
                for name, run in cases.items():
                    started = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - started)
            client.close()
        finally:
            server.terminate()
            server.wait(30)

    base = statistics.median(times["direct"])
    print(
        f"GenerateImage {args.size}x{args.size}, {args.steps} steps, {args.runs} interleaved runs, "
        f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}"
    )
    print(f"  baseline: direct in-process pipeline call, median {base * 1000:.1f} ms")
    for name in ("direct+png", "service"):
        p50 = statistics.median(times[name]) / base
        p90 = _percentile(times[name], 0.9) / _percentile(times["direct"], 0.9)
        print(f"  {name:<11} / direct: p50 ratio {p50:.3f}, p90 ratio {p90:.3f}")


if __name__ == "__main__":
    main()
