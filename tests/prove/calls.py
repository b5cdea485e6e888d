"""How the scenarios call a server: the Python client, raw channels, bounded threads."""

from __future__ import annotations

import hashlib
import io
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import grpc
from PIL import Image

from pixelgate.client import GeneratedImage, PixelgateClient, PixelgateError
from pixelgate.v1 import image_service_pb2 as pb
from pixelgate.v1 import image_service_pb2_grpc as pb_grpc

from .identity import Identities, TlsIdentity

T = TypeVar("T")

GENERATE = "/pixelgate.v1.ImageService/GenerateImage"
LIST_MODELS = "/pixelgate.v1.ImageService/ListModels"


def status_of(error: BaseException) -> str:
    """The status name a failed call ended with (client errors and raw RpcErrors alike)."""
    if isinstance(error, PixelgateError):
        return error.code.name if error.code is not None else "INCOMPLETE_IMAGE"
    if isinstance(error, grpc.RpcError):
        code = error.code()
        return str(code.name) if code is not None else "NO_STATUS"
    return f"CLIENT_{type(error).__name__}"


def client(
    ids: Identities, target: str, token: str | None, tls: TlsIdentity | None = None
) -> PixelgateClient:
    """The Python client over mutual TLS (the dev client certificate unless `tls`)."""
    return PixelgateClient(
        target,
        ca_file=ids.pki.ca_cert,
        cert_file=tls.cert_file if tls else ids.pki.client_cert,
        key_file=tls.key_file if tls else ids.pki.client_key,
        token=token,
    )


def tls_channel(
    ids: Identities,
    target: str,
    *,
    tls: TlsIdentity | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A raw mTLS channel with no call credentials: each call brings its own metadata."""
    cert_file = tls.cert_file if tls else ids.pki.client_cert
    key_file = tls.key_file if tls else ids.pki.client_key
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ids.pki.ca_cert.read_bytes(),
        private_key=key_file.read_bytes(),
        certificate_chain=cert_file.read_bytes(),
    )
    return grpc.secure_channel(target, credentials, options=list(options))


Metadata = tuple[tuple[str, str | bytes], ...]
"""Call metadata as grpcio takes it."""


def bearer(token: str) -> Metadata:
    """Call metadata carrying `token`."""
    return (("authorization", f"Bearer {token}"),)


def images_stub(channel: grpc.Channel) -> pb_grpc.ImageServiceStub:
    """The typed stub on a channel."""
    return pb_grpc.ImageServiceStub(channel)


def check_png(image: GeneratedImage, size: tuple[int, int]) -> str | None:
    """None when `image` is a whole PNG of `size` whose SHA-256 is the announced one."""
    if hashlib.sha256(image.data).hexdigest() != image.sha256:
        return "SHA-256 mismatch"
    try:
        with Image.open(io.BytesIO(image.data)) as decoded:
            decoded.load()
            if decoded.format != "PNG" or decoded.size != size:
                return f"decoded {decoded.format} {decoded.size}, wanted PNG {size}"
    except Exception as error:
        return f"does not decode: {type(error).__name__}"
    return None


def first_message(call: Any) -> tuple[str, Any]:
    """Reads a server stream's first message: ("OK", message), or (status, None) if it ended."""
    try:
        return "OK", next(call)
    except StopIteration:
        return "OK", None
    except grpc.RpcError as error:
        return status_of(error), None


def in_threads(
    work: Callable[[T], None], items: Iterable[T], workers: int, timeout: float
) -> tuple[int, list[str]]:
    """Runs `work` on every item with `workers` daemon threads.

    Returns how many items were not done in time, and what `work` raised (the
    prover's own faults). Daemon threads: a call that hangs is counted, and
    cannot keep the run from ending.
    """
    pending: queue.SimpleQueue[T] = queue.SimpleQueue()
    count = 0
    for item in items:
        pending.put(item)
        count += 1
    done = 0
    errors: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        nonlocal done
        while True:
            try:
                item = pending.get_nowait()
            except queue.Empty:
                return
            try:
                work(item)
            except Exception as error:
                with lock:
                    errors.append(f"prover error {type(error).__name__}: {error}")
            with lock:
                done += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(workers, count))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    with lock:
        return count - done, list(errors)


def generate_request(**fields: Any) -> pb.GenerateImageRequest:
    """A GenerateImageRequest (PNG unless said otherwise)."""
    fields.setdefault("output_format", pb.OUTPUT_FORMAT_PNG)
    return pb.GenerateImageRequest(**fields)


__all__ = [
    "GENERATE",
    "LIST_MODELS",
    "Metadata",
    "bearer",
    "check_png",
    "client",
    "first_message",
    "generate_request",
    "images_stub",
    "in_threads",
    "status_of",
    "tls_channel",
]
