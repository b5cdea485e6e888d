"""Benchmark: image bytes through the service vs raw grpcio streaming of as many bytes.

One pixelgate server process per chunk size and variant (the whole chain,
mutual TLS, a token, the tiny model allowed up to 1024x1024) and one bare
grpc.aio server process over the same mutual TLS that streams pre-made
messages of the same size (random bytes, no protobuf, no interceptors, no work
per message): the wire's speed for this machine, grpcio and message size.

Each round asks each service for `--images` 1024x1024 PNGs in one call (the
tiny model's images are noise, so each PNG is about 2.4 MiB; one denoising
step) and the raw server for as many bytes, image by image, in messages of the
same size; the order (services first or raw first) alternates from round to
round. Generation and encoding are left out: an image's time runs from the
arrival of its first chunk to the arrival of its last message (the service's
ImageComplete, the raw server's last chunk), so it covers every byte after the
first message. Both sides use grpcio's synchronous client, the service's
messages parsed as GenerateImageResponse, the raw ones left as bytes.

A transfer takes a few milliseconds, about one scheduler time slice. To keep
the client and the servers from taking turns on one core, the servers run on
one CPU and the client on another (`--cpus SERVERS,CLIENT`, default 0,1 where
there are two; `--cpus ''` leaves placement to the kernel). Other processes
still share those CPUs: run it on a quiet machine.

Prints per chunk size and service variant: the medians over every image of the
MiB/s of the bytes after the first message; the median (range) over the rounds
of the speed ratio service/raw (the round's median raw time over its median
service time); the ratio of each side's best image; and the speed ratio with
the service's time taken to the image's last chunk instead (its ImageComplete,
one more message, left out: the wire's share of the difference).

    .venv/bin/python tests/benchmarks/image_streaming.py [--chunk-kib 64,256,1024] [--rounds 8]
        [--images 4] [--cpus 0,1] [--variant 'NAME:VAR=value,...' ...]

A --variant adds a service server started with those environment variables
(measured in the same rounds as the plain one, named "service"): e.g.
'before:PYTHONPATH=/tmp/old/server' runs an older copy of the server's code,
'arena:MALLOC_ARENA_MAX=1' a malloc setting, and PIXELGATE_ variables change
its settings.
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
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
from bench_server import dev_token, start_server, stop, write_config

from pixelgate.dev.pki import DevPkiFiles
from pixelgate.v1 import image_service_pb2 as pb
from pixelgate.v1 import image_service_pb2_grpc as pb_grpc

RAW_METHOD = "/bench.RawStream/Stream"
SIZE = 1024
TINY_MODEL_UP_TO_1024 = f"""
[[models]]
max_width = {SIZE}
max_height = {SIZE}
# The memory guard's estimate is for real models; the tiny one needs next to nothing.
activation_mb_per_megapixel = 1
"""


async def _serve_raw(config: Path) -> None:
    """A bare grpc.aio server: request "chunk_size total" -> that many bytes in messages."""
    from pixelgate.server.core.config import load_settings

    tls = load_settings(config).tls
    made: dict[tuple[int, int], list[bytes]] = {}

    async def stream(
        request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        chunk_size, total = (int(part) for part in request.split())
        if (chunk_size, total) not in made:
            data = os.urandom(total)
            made[chunk_size, total] = [
                data[offset : offset + chunk_size] for offset in range(0, total, chunk_size)
            ]
        for message in made[chunk_size, total]:
            yield message

    handler = grpc.method_handlers_generic_handler(
        "bench.RawStream", {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=tls.client_ca_file.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    print(f"pixelgate: serving on port {port}", flush=True)
    await server.wait_for_termination()


def _through_service(
    channel: grpc.Channel, token: str, images: int
) -> list[tuple[float, float, int, int]]:
    """Per image: (seconds from its first chunk to its ImageComplete, and to its last chunk,
    its bytes, its first chunk's bytes)."""
    stub = pb_grpc.ImageServiceStub(channel)
    request = pb.GenerateImageRequest(
        prompt="noise",
        width=SIZE,
        height=SIZE,
        steps=1,
        seed=7,
        num_images=images,
        output_format=pb.OUTPUT_FORMAT_PNG,
    )
    first_at: dict[int, tuple[float, int]] = {}
    last_at = 0.0
    done: list[tuple[float, float, int, int]] = []
    for response in stub.GenerateImage(
        request, credentials=grpc.access_token_call_credentials(token)
    ):
        now = time.perf_counter()
        kind = response.WhichOneof("event")
        if kind == "chunk":
            last_at = now
            if response.chunk.image_index not in first_at:
                first_at[response.chunk.image_index] = (now, len(response.chunk.data))
        elif kind == "complete":
            at, first_size = first_at[response.complete.image_index]
            done.append((now - at, last_at - at, response.complete.size_bytes, first_size))
    if len(done) != images:
        raise RuntimeError(f"the stream ended after {len(done)} of {images} images")
    return done


def _raw(channel: grpc.Channel, chunk_size: int, total: int) -> float:
    """Seconds from the first message to the last."""
    # No (de)serializers: the messages stay bytes, as grpcio carries them.
    method = channel.unary_stream(RAW_METHOD, None, None)
    call = method(f"{chunk_size} {total}".encode())
    first_at = 0.0
    last_at = 0.0
    for _ in call:
        last_at = time.perf_counter()
        first_at = first_at or last_at
    return last_at - first_at


@dataclass
class _Side:
    """One side's measurements at one chunk size: per image and per round."""

    name: str
    channel: grpc.Channel
    image_seconds: list[float] = field(default_factory=list)
    round_medians: list[float] = field(default_factory=list)
    to_last_chunk: list[float] = field(default_factory=list)
    """The service's round medians up to the image's last chunk (its ImageComplete left out)."""


def _measure(
    args: argparse.Namespace,
    files: DevPkiFiles,
    service_ports: dict[int, dict[str, int]],
    raw_port: int,
) -> None:
    token = dev_token(files)
    tls = grpc.ssl_channel_credentials(
        files.ca_cert.read_bytes(), files.client_key.read_bytes(), files.client_cert.read_bytes()
    )
    raw = grpc.secure_channel(f"127.0.0.1:{raw_port}", tls)
    print(
        f"{SIZE}x{SIZE} PNG, first chunk to last message, {args.rounds} rounds of {args.images} "
        f"images per chunk size (services and raw alternating); CPUs {args.cpus or 'any'}; "
        "medians (range)"
    )
    for chunk_kib, ports in service_ports.items():
        chunk_size = chunk_kib * 1024
        services = [
            _Side(name, grpc.secure_channel(f"127.0.0.1:{port}", tls))
            for name, port in ports.items()
        ]
        # Warm-up (not counted): connects, loads and runs the model, makes the raw bytes.
        images = []
        for side in services:
            images = _through_service(side.channel, token, args.images)
        sizes = [size for _seconds, _last, size, _first in images]
        measured_mib = sum(size - first for _seconds, _last, size, first in images) / 2**20
        for size in sizes:
            _raw(raw, chunk_size, size)
        raw_side = _Side("raw", raw)
        for index in range(args.rounds):
            sides = [*services, raw_side]
            for side in sides if index % 2 == 0 else reversed(sides):
                if side is raw_side:
                    seconds = [_raw(raw, chunk_size, size) for size in sizes]
                else:
                    measured = _through_service(side.channel, token, args.images)
                    seconds = [to_complete for to_complete, _last, _size, _first in measured]
                    side.to_last_chunk.append(
                        statistics.median(last for _complete, last, _size, _first in measured)
                    )
                side.image_seconds += seconds
                # The round's median image, not its sum: one preempted transfer in a few
                # milliseconds' work would otherwise decide the round.
                side.round_medians.append(statistics.median(seconds))
        for side in services:
            side.channel.close()
            ratios = [
                r / s for r, s in zip(raw_side.round_medians, side.round_medians, strict=True)
            ]
            chunk_ratios = [
                r / s for r, s in zip(raw_side.round_medians, side.to_last_chunk, strict=True)
            ]
            per_image = measured_mib / len(sizes)
            print(
                f"  chunk {chunk_kib:>5} KiB ({sum(sizes) / len(sizes) / 2**20:.2f} MiB images) "
                f"{side.name}: median {per_image / statistics.median(side.image_seconds):.0f} "
                f"MiB/s, raw {per_image / statistics.median(raw_side.image_seconds):.0f} MiB/s; "
                f"speed {side.name}/raw {statistics.median(ratios):.3f} "
                f"({min(ratios):.3f}-{max(ratios):.3f}); best of each "
                f"{min(raw_side.image_seconds) / min(side.image_seconds):.3f}; to the last "
                f"chunk {statistics.median(chunk_ratios):.3f} "
                f"({min(chunk_ratios):.3f}-{max(chunk_ratios):.3f})"
            )
    raw.close()


def _variant(text: str) -> tuple[str, dict[str, str]]:
    """'NAME:VAR=value,...' -> (NAME, {VAR: value})."""
    name, _colon, settings = text.partition(":")
    environment = {}
    for item in filter(None, settings.split(",")):
        variable, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"expected VAR=value, got {item!r}")
        environment[variable.strip()] = value.strip()
    return name.strip(), environment


def _pin(cpus: str) -> tuple[set[int], set[int]] | None:
    """'0,1' -> ({0}, {1}): the servers' CPU and the client's; '' -> None."""
    if not cpus:
        return None
    server, client = (int(cpu) for cpu in cpus.split(","))
    return {server}, {client}


def main() -> None:
    """Starts the servers, measures, prints ratios."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunk-kib", default="64,256,1024", help="chunk sizes to compare")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--images", type=int, default=4, help="images per call (at most 4)")
    parser.add_argument(
        "--cpus",
        default="0,1" if len(os.sched_getaffinity(0)) >= 2 else "",
        help="SERVERS,CLIENT: the CPU the servers run on, the client's ('' for any)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME:VAR=value,...: one more service server, with those environment variables",
    )
    parser.add_argument("--serve-raw", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_raw:
        asyncio.run(_serve_raw(args.config))
        return
    chunk_sizes = [int(kib) for kib in args.chunk_kib.split(",")]
    variants = dict([("service", {}), *(_variant(text) for text in args.variant)])
    pinned = _pin(args.cpus)

    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        processes: list[subprocess.Popen[str]] = []
        config, files = write_config(directory, TINY_MODEL_UP_TO_1024)
        everywhere = os.sched_getaffinity(0)
        try:
            if pinned:
                os.sched_setaffinity(0, pinned[0])  # the servers inherit it
            raw, raw_port = start_server(
                config, [sys.executable, __file__, "--serve-raw"], name="raw"
            )
            processes.append(raw)
            service_ports: dict[int, dict[str, int]] = {}
            for kib in chunk_sizes:
                service_ports[kib] = {}
                for name, environment in variants.items():
                    saved = dict(os.environ)
                    os.environ.update(environment)  # start_server passes os.environ on
                    try:
                        process, service_ports[kib][name] = start_server(
                            config,
                            overrides={"chunk_size": str(kib * 1024)},
                            name=f"{name}-{kib}k",
                        )
                    finally:
                        os.environ.clear()
                        os.environ.update(saved)
                    processes.append(process)
            os.sched_setaffinity(0, pinned[1] if pinned else everywhere)
            _measure(args, files, service_ports, raw_port)
        finally:
            for process in processes:
                stop(process)


if __name__ == "__main__":
    main()
