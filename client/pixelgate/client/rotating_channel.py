"""A secure channel that follows its TLS files as they rotate.

grpc has no dynamic channel credentials, so the files are looked at (a stat)
at most once per `check_interval` seconds when a call starts; once they changed
and load, new calls go to a new channel, and the old one closes when its last
call ends. Open calls are never cut.

Stubs are built once per channel, when it opens: grpcio 1.85 can crash the
process when a stub is built on a closed channel.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import grpc

from pixelgate.client.credentials import channel_credentials

log = logging.getLogger(__name__)

S = TypeVar("S")


def _signature(paths: Sequence[Path]) -> tuple[tuple[int, int, int] | None, ...]:
    signature: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            stat = os.stat(path)  # follows symlinks: a Kubernetes `..data` swap is a new inode
        except OSError:
            signature.append(None)
        else:
            signature.append((stat.st_ino, stat.st_mtime_ns, stat.st_size))
    return tuple(signature)


def check_tls_files(*, ca_file: Path, cert_file: Path, key_file: Path) -> None:
    """Raises ssl.SSLError or OSError unless the files load and the key matches the certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_cert_chain(cert_file, key_file)  # refuses a key that is not the certificate's
    context.load_verify_locations(cafile=ca_file)


@dataclass
class _Opened(Generic[S]):
    channel: grpc.Channel
    stubs: S
    calls: int = 0
    retired: bool = False


class RotatingChannel(Generic[S]):
    """An mTLS channel to `target` that reopens when its CA, certificate or key file changes.

    `stubs` builds what calls use from a channel (e.g. the service stubs).
    """

    def __init__(
        self,
        target: str,
        stubs: Callable[[grpc.Channel], S],
        *,
        ca_file: Path,
        cert_file: Path,
        key_file: Path,
        options: Sequence[tuple[str, str]] = (),
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._target = target
        self._stubs = stubs
        self._files = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file}
        self._options = list(options)
        self._check_interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._signature = _signature(list(self._files.values()))
        self._current = self._open()
        self._draining: list[_Opened[S]] = []  # replaced, with calls still open on them
        self._next_check = clock() + check_interval
        self.rejected_rotations = 0
        """Changed file sets that did not load (the channel in use was kept)."""

    def _open(self) -> _Opened[S]:
        credentials = channel_credentials(**self._files, token=None)
        channel = grpc.secure_channel(self._target, credentials, options=self._options)
        return _Opened(channel, self._stubs(channel))

    @contextmanager
    def lease(self) -> Iterator[S]:
        """The stubs for one call; their channel stays open until the block ends."""
        with self._lock:
            self._rotate_if_changed()
            opened = self._current
            opened.calls += 1
        try:
            yield opened.stubs
        finally:
            with self._lock:
                opened.calls -= 1
                last_call_of_retired = opened.retired and opened.calls == 0
                if last_call_of_retired and opened in self._draining:
                    self._draining.remove(opened)
            if last_call_of_retired:
                opened.channel.close()

    def _rotate_if_changed(self) -> None:
        now = self._clock()
        if now < self._next_check or self._current.retired:
            return
        self._next_check = now + self._check_interval
        signature = _signature(list(self._files.values()))
        if signature == self._signature:
            return
        self._signature = signature  # a refused set is not retried until it changes again
        try:
            check_tls_files(**self._files)
            opened = self._open()
        except (OSError, ssl.SSLError, ValueError) as error:
            self.rejected_rotations += 1
            log.warning(  # the reason and file names only: never the files' content
                "TLS files changed but did not load (%s: %s); keeping the channel in use",
                type(error).__name__,
                getattr(error, "reason", None) or getattr(error, "strerror", None),
            )
            return
        previous, self._current = self._current, opened
        previous.retired = True
        if previous.calls == 0:
            previous.channel.close()
        else:
            self._draining.append(previous)
        log.info("TLS files changed: new calls use a new channel")

    def close(self) -> None:
        """Closes every channel, cancelling the calls still open on them."""
        with self._lock:
            self._current.retired = True
            closing = [self._current, *self._draining]
            self._draining.clear()
        for opened in closing:
            opened.channel.close()


__all__ = ["RotatingChannel", "check_tls_files"]
