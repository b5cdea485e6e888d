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

from pixelgate.client.credentials import TokenSource, token_provider
from pixelgate.client.errors import RateLimited, Unavailable, error_from_rpc
from pixelgate.client.images import GeneratedImage, ImageAssembler
from pixelgate.client.rotating_channel import RotatingChannel
from pixelgate.client.service_config import HEALTH_SERVICE, ServiceConfig
from pixelgate.client.targets import address_list_host, channel_target, names_a_fleet
from pixelgate.client.trace_context import traced_channel
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
    """Wait out the caller's own rate limit (RESOURCE_EXHAUSTED): opt in, as long as told.

    Only refusals that name a delay (`retry-after`) are retried, at most
    `max_attempts` tries in all, and never when the delay exceeds `max_delay`
    seconds; a generation only if the refusal came before its first event.
    Every replica shares the caller's budget, so this is a wait, not a retry
    elsewhere: that one (UNAVAILABLE, a busy replica) is the channel's own.
    """

    max_attempts: int = 3
    max_delay: float = 30.0
    sleep: Callable[[float], None] = time.sleep

    def delay(self, error: RateLimited, attempt: int) -> float | None:
        """Seconds to wait before trying again, or None to give up."""
        if attempt >= self.max_attempts or error.retry_after is None:
            return None
        return error.retry_after if error.retry_after <= self.max_delay else None


class _Stubs:
    """The stubs of one channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        channel = traced_channel(channel)  # calls join the caller's current trace
        self.images = pb_grpc.ImageServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)


class PixelgateClient:
    """A connection to a pixelgate server. Use as a context manager, or call close().

    The token comes from `token` before each call that needs one, in the calling
    thread: a source that fails raises its own error from the call (a
    `ClientCredentials` refused by its token endpoint raises `TokenEndpointError`,
    an unreadable token file `OSError`), and the call is not made.

    `target` is one server (host:port) or a fleet (`dns:///name:port`, or a list
    "ip:port,ip:port"): calls go round-robin to the replicas whose health says
    SERVING. A call a replica refuses with UNAVAILABLE (it cannot take it now)
    is tried again on the next one, up to `attempts` tries in all, after the
    server's pushback; gRPC does this only before any response reached us.

    The CA, certificate and key files are looked at (at most once per
    `tls_check_interval` seconds, as calls start): when they change and load,
    new calls use them on a new channel, and calls in progress go on.
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
        tls_check_interval: float = 1.0,
        attempts: int = ServiceConfig.max_attempts,
    ) -> None:
        target = channel_target(target)
        service_config = ServiceConfig(
            max_attempts=attempts,
            # Health-checked balancing for a fleet; one server is reached whatever its health.
            health_service=HEALTH_SERVICE if names_a_fleet(target) else None,
        )
        options = service_config.channel_options()
        server_name = server_name or address_list_host(target)
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        # Per call rather than on the channel: gRPC runs channel call credentials in a
        # thread of its own and turns any failure there into UNAVAILABLE, which blames
        # the server for a refused client secret.
        self._token = token_provider(token) if token is not None else None
        self._channels = RotatingChannel(
            target,
            _Stubs,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            options=options,
            check_interval=tls_check_interval,
        )
        self._retry = retry
        self._attempts = attempts

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
        the server asks for. A job a draining replica ends while it still waits
        in the queue (UNAVAILABLE with pushback, nothing of it run) goes to
        another replica within `attempts`: its queue position shows again.
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
        sent_away = 0
        while True:
            started = ran = False
            try:
                for event in self._stream_once(request, num_images or 1, timeout):
                    started = True
                    ran = ran or not _queued(event)
                    yield event
                return
            except RateLimited as error:
                wait = None if started or self._retry is None else self._retry.delay(error, attempt)
                if wait is None:
                    raise
                self._retry.sleep(wait)  # type: ignore[union-attr]
                attempt += 1
            except Unavailable as error:
                # gRPC's retry ends at the first response (the queue position), so a job
                # a draining replica sent away unstarted is sent on here. Refused before
                # any response, the channel has retried it already.
                sent_away += 1
                if ran or not started or error.pushback is None or sent_away >= self._attempts:
                    raise
                time.sleep(error.pushback)

    def _stream_once(
        self, request: pb.GenerateImageRequest, num_images: int, timeout: float | None
    ) -> Iterator[Event]:
        with self._channels.lease() as stubs:
            call = stubs.images.GenerateImage(
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

        def list_them() -> list[pb.ModelInfo]:
            with self._channels.lease() as stubs:
                response = stubs.images.ListModels(
                    request, timeout=timeout, credentials=self._call_credentials()
                )
            return list(response.models)

        return self._unary(list_them)

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
            with self._channels.lease() as stubs:
                response = stubs.health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=timeout
                )
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    @property
    def rejected_tls_rotations(self) -> int:
        """Changed TLS file sets that did not load (calls went on with the previous ones)."""
        return self._channels.rejected_rotations

    def close(self) -> None:
        """Closes the channel."""
        self._channels.close()

    def __enter__(self) -> PixelgateClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _queued(event: Event) -> bool:
    return isinstance(event, pb.Progress) and event.state == pb.Progress.STATE_QUEUED


__all__ = ["OUTPUT_FORMATS", "Event", "PixelgateClient", "RetryPolicy"]
