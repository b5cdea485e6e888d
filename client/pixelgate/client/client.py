"""The Python client: mTLS + access token, streaming generation, verified images."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pixelgate.client.credentials import TokenSource, channel_credentials, token_provider
from pixelgate.client.errors import RateLimited, error_from_rpc
from pixelgate.client.images import GeneratedImage, ImageAssembler
from pixelgate.v1 import image_service_pb2 as pb
from pixelgate.v1 import image_service_pb2_grpc as pb_grpc

OUTPUT_FORMATS = {
    "png": pb.OUTPUT_FORMAT_PNG,
    "jpeg": pb.OUTPUT_FORMAT_JPEG,
    "jpg": pb.OUTPUT_FORMAT_JPEG,
    "webp": pb.OUTPUT_FORMAT_WEBP,
}
"""Output format names the client accepts."""

Event = pb.Progress | GeneratedImage
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Retry calls refused with RESOURCE_EXHAUSTED, waiting as long as the server says.

    Only refusals that name a delay are retried, at most `max_attempts` tries
    in all, and never when the delay exceeds `max_delay` seconds. A generation
    is retried only if the refusal came before its first event.
    """

    max_attempts: int = 3
    max_delay: float = 30.0
    sleep: Callable[[float], None] = time.sleep

    def delay(self, error: RateLimited, attempt: int) -> float | None:
        """Seconds to wait before trying again, or None to give up."""
        if attempt >= self.max_attempts or error.retry_after is None:
            return None
        return error.retry_after if error.retry_after <= self.max_delay else None


class PixelgateClient:
    """A connection to a pixelgate server. Use as a context manager, or call close().

    The token comes from `token` before each call that needs one, in the calling
    thread: a source that fails raises its own error from the call (a
    `ClientCredentials` refused by its token endpoint raises `TokenEndpointError`,
    an unreadable token file `OSError`), and the call is not made.
    """

    def __init__(
        self,
        target: str,
        *,
        ca_file: Path,
        cert_file: Path,
        key_file: Path,
        token: TokenSource | None = None,
        server_name: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        credentials = channel_credentials(
            ca_file=ca_file, cert_file=cert_file, key_file=key_file, token=None
        )
        # Per call rather than on the channel: gRPC runs channel call credentials in a
        # thread of its own and turns any failure there into UNAVAILABLE, which blames
        # the server for a refused client secret.
        self._token = token_provider(token) if token is not None else None
        self._channel = grpc.secure_channel(target, credentials, options=options)
        self._images = pb_grpc.ImageServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._retry = retry

    def stream(
        self,
        prompt: str,
        *,
        negative_prompt: str = "",
        model: str = "",
        width: int = 0,
        height: int = 0,
        steps: int = 0,
        guidance_scale: float | None = None,
        seed: int | None = None,
        num_images: int = 1,
        output_format: str = "png",
        timeout: float | None = None,
    ) -> Iterator[Event]:
        """Yields Progress messages, then each GeneratedImage once verified.

        Raises a PixelgateError subclass on failure, IncompleteImage if the
        stream ends with an image missing or corrupt. Stopping iteration early
        cancels the call, and with it the server's work. With a RetryPolicy, a
        rate-limit refusal before the first event is retried after the delay
        the server asks for.
        """
        request = pb.GenerateImageRequest(
            prompt=prompt,
            negative_prompt=negative_prompt,
            model=model,
            width=width,
            height=height,
            steps=steps,
            num_images=num_images,
            output_format=OUTPUT_FORMATS[output_format.lower()],
        )
        if guidance_scale is not None:
            request.guidance_scale = guidance_scale
        if seed is not None:
            request.seed = seed
        attempt = 1
        while True:
            started = False
            try:
                for event in self._stream_once(request, num_images or 1, timeout):
                    started = True
                    yield event
                return
            except RateLimited as error:
                wait = None if started or self._retry is None else self._retry.delay(error, attempt)
                if wait is None:
                    raise
                self._retry.sleep(wait)  # type: ignore[union-attr]
                attempt += 1

    def _stream_once(
        self, request: pb.GenerateImageRequest, num_images: int, timeout: float | None
    ) -> Iterator[Event]:
        call = self._images.GenerateImage(
            request, timeout=timeout, credentials=self._call_credentials()
        )
        assembler = ImageAssembler()
        try:
            for response in call:
                kind = response.WhichOneof("event")
                if kind == "progress":
                    yield response.progress
                elif kind == "chunk":
                    assembler.add_chunk(response.chunk)
                elif kind == "complete":
                    yield assembler.complete(response.complete)
            assembler.finish(num_images)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        finally:
            call.cancel()  # type: ignore[no-untyped-call]  # a no-op once the call ended

    def generate(
        self,
        prompt: str,
        *,
        on_progress: Callable[[pb.Progress], None] | None = None,
        **options: object,
    ) -> list[GeneratedImage]:
        """Generates images and returns them verified; `options` as for stream()."""
        images = []
        for event in self.stream(prompt, **options):  # type: ignore[arg-type]
            if isinstance(event, GeneratedImage):
                images.append(event)
            elif on_progress is not None:
                on_progress(event)
        return images

    def list_models(self, *, timeout: float | None = 10) -> list[pb.ModelInfo]:
        """The models the server offers, with their bounds."""
        request = pb.ListModelsRequest()
        return self._unary(
            lambda: list(
                self._images.ListModels(
                    request, timeout=timeout, credentials=self._call_credentials()
                ).models
            )
        )

    def _call_credentials(self) -> grpc.CallCredentials | None:
        # Call credentials travel only over a secure channel, and this one always is.
        if self._token is None:
            return None
        return grpc.access_token_call_credentials(self._token())

    def _unary(self, call: Callable[[], T]) -> T:
        attempt = 1
        while True:
            try:
                try:
                    return call()
                except grpc.RpcError as error:
                    raise error_from_rpc(error) from None
            except RateLimited as error:
                wait = self._retry.delay(error, attempt) if self._retry else None
                if wait is None:
                    raise
                self._retry.sleep(wait)  # type: ignore[union-attr]
                attempt += 1

    def health(self, service: str = "", *, timeout: float | None = 10) -> str:
        """The serving status of `service` ("" = the whole server), e.g. "SERVING".

        Health checks need no token, so none is fetched for them.
        """
        try:
            response = self._health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def __enter__(self) -> PixelgateClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


__all__ = ["OUTPUT_FORMATS", "Event", "PixelgateClient", "RetryPolicy"]
