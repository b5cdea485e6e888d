"""Benchmark: image bytes through the service vs raw grpcio streaming of as many bytes.

One pixelgate server process per chunk size (the whole chain, mutual TLS, a
token, the tiny model allowed up to 1024x1024) and one bare grpc.aio server
process over the same mutual TLS that streams pre-made messages of the same
size (random bytes, no protobuf, no interceptors, no work per message): the
wire's speed for this machine, grpcio and message size.

Each round asks the service for one 1024x1024 PNG (the tiny model's images are
noise, so the PNG is about 2.4 MiB; one denoising step) and then the raw server
for as many bytes in messages of the same size, or the other way round
(alternating). Generation and encoding are left out: the time is from the
arrival of the first image chunk to the arrival of the last message (the
service's ImageComplete, the raw server's last chunk), so it covers every byte
after the first message. Both sides use grpcio's synchronous client, the
service's messages parsed as GenerateImageResponse, the raw ones left as bytes.

Prints per chunk size: the medians over the rounds of the MiB/s of the bytes
after the first message, the median (range) of the speed ratio service/raw
(raw time over service time, same round), and the ratio of each side's best
round. A transfer takes a few milliseconds, about one scheduler time slice: on
a busy machine one preempted round swings its ratio by 2x or more, so run it
on a quiet one, with more rounds.

    .venv/bin/python tests/benchmarks/image_streaming.py [--chunk-kib 64,256,1024] [--rounds 8]
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


def _through_service(channel: grpc.Channel, token: str) -> tuple[float, int, int]:
    """(seconds from the first chunk to ImageComplete, image bytes, first chunk's bytes)."""
    stub = pb_grpc.ImageServiceStub(channel)
    request = pb.GenerateImageRequest(
        prompt="noise", width=SIZE, height=SIZE, steps=1, seed=7, output_format=pb.OUTPUT_FORMAT_PNG
    )
    first_at = 0.0
    first_size = 0
    for response in stub.GenerateImage(
        request, credentials=grpc.access_token_call_credentials(token)
    ):
        kind = response.WhichOneof("event")
        if kind == "chunk" and not first_at:
            first_at = time.perf_counter()
            first_size = len(response.chunk.data)
        elif kind == "complete":
            return time.perf_counter() - first_at, response.complete.size_bytes, first_size
    raise RuntimeError("the stream ended without an image")


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


def _measure(
    args: argparse.Namespace, files: DevPkiFiles, service_ports: dict[int, int], raw_port: int
) -> None:
    token = dev_token(files)
    tls = grpc.ssl_channel_credentials(
        files.ca_cert.read_bytes(), files.client_key.read_bytes(), files.client_cert.read_bytes()
    )
    raw = grpc.secure_channel(f"127.0.0.1:{raw_port}", tls)
    print(
        f"{SIZE}x{SIZE} PNG, first chunk to last message, {args.rounds} rounds per chunk size "
        "(service and raw alternating); medians (range)"
    )
    for chunk_kib, port in service_ports.items():
        chunk_size = chunk_kib * 1024
        service = grpc.secure_channel(f"127.0.0.1:{port}", tls)
        # Warm-up (not counted): connects, loads and runs the model once, makes the raw bytes.
        _seconds, total, first = _through_service(service, token)
        _raw(raw, chunk_size, total)
        service_times: list[float] = []
        raw_times: list[float] = []
        for index in range(args.rounds):
            if index % 2 == 0:
                service_times.append(_through_service(service, token)[0])
                raw_times.append(_raw(raw, chunk_size, total))
            else:
                raw_times.append(_raw(raw, chunk_size, total))
                service_times.append(_through_service(service, token)[0])
        service.close()
        ratios = [r / s for r, s in zip(raw_times, service_times, strict=True)]
        measured_mib = (total - first) / 2**20
        print(
            f"  chunk {chunk_kib:>5} KiB ({total / 2**20:.2f} MiB image): median service "
            f"{measured_mib / statistics.median(service_times):.0f} MiB/s, raw "
            f"{measured_mib / statistics.median(raw_times):.0f} MiB/s; speed service/raw "
            f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}); "
            f"best of each {min(raw_times) / min(service_times):.3f}"
        )
    raw.close()


def main() -> None:
    """Starts the servers, measures, prints ratios."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunk-kib", default="64,256,1024", help="chunk sizes to compare")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--serve-raw", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_raw:
        asyncio.run(_serve_raw(args.config))
        return
    chunk_sizes = [int(kib) for kib in args.chunk_kib.split(",")]

    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        processes: list[subprocess.Popen[str]] = []
        config, files = write_config(directory, TINY_MODEL_UP_TO_1024)
        try:
            raw, raw_port = start_server(
                config, [sys.executable, __file__, "--serve-raw"], name="raw"
            )
            processes.append(raw)
            service_ports = {}
            for kib in chunk_sizes:
                process, service_ports[kib] = start_server(
                    config, overrides={"chunk_size": str(kib * 1024)}, name=f"service-{kib}k"
                )
                processes.append(process)
            _measure(args, files, service_ports, raw_port)
        finally:
            for process in processes:
                stop(process)


if __name__ == "__main__":
    main()
