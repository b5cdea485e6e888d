"""Where audit lines go: a file or a standard stream, written by a thread of its own.

The lines bypass the process log, so no log level silences them: they go to
stderr by default (beside the log lines) or to a file that holds audit lines
only, one JSON object per line.
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
import time
from typing import Any

from pixelgate.server.audit.lines import AuditLines
from pixelgate.server.core.config import ConfigError
from pixelgate.server.core.principal import Principal
from pixelgate.server.rpc.call_record import CallRecord

log = logging.getLogger("pixelgate.audit")
"""Reports trouble writing the audit lines (never the lines themselves)."""


PIPE_ATOMIC_BYTES = 4096
"""Writes up to this size reach a pipe whole (POSIX PIPE_BUF), never split by another writer."""

STANDARD_STREAMS = {"stdout": 1, "stderr": 2}

MAX_QUEUED_CALLS = 100_000
"""Calls waiting for their line; beyond this (a stalled destination) lines are
dropped and counted rather than growing memory without bound."""


def open_audit_destination(destination: str) -> tuple[int, bool]:
    """The file descriptor audit lines go to, and whether the writer owns (closes) it.

    "stderr" and "stdout" are the process's streams; anything else must be a
    regular file (not a link, pipe or device), appended to, created readable
    by its owner only and refused if every user may read it (the lines name
    callers). A log rotator should copy and truncate it.
    """
    if destination in STANDARD_STREAMS:
        return STANDARD_STREAMS[destination], False
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(destination, flags | os.O_NONBLOCK, 0o600)  # a FIFO must not hang start-up
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"audit destination {destination} is not a regular file")
        if mode & stat.S_IRWXO:
            raise ConfigError(
                f"audit destination {destination} is open to every user "
                f"(mode {stat.S_IMODE(mode):o}); allow its owner and group only"
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, True


def write_lines(fd: int, lines: list[bytes], *, to_file: bool = False) -> None:
    """Writes whole lines: to a regular file in one system call; to a pipe or terminal
    in as few as keep each under PIPE_ATOMIC_BYTES, so no other writer splits a line."""
    if to_file:
        _write_all(fd, b"".join(lines))
        return
    batch = bytearray()
    for line in lines:
        if batch and len(batch) + len(line) > PIPE_ATOMIC_BYTES:
            _write_all(fd, batch)
            batch.clear()
        batch += line
    if batch:
        _write_all(fd, batch)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class AuditWriter:
    """Turns finished calls into audit lines on a thread of its own, off the event loop.

    The thread wakes every `interval` seconds and writes what has queued up
    straight to its file descriptor, a few lines per system call, as Envoy's
    access logs do: a busy server pays neither a thread switch nor a logging
    record per call.
    """

    def __init__(
        self,
        destination: str = "stderr",
        interval: float = 0.05,
        max_queued: int = MAX_QUEUED_CALLS,
    ) -> None:
        self._fd, self._owns_fd = open_audit_destination(destination)
        self._to_file = stat.S_ISREG(os.fstat(self._fd).st_mode)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._max_queued = max_queued
        self._dropped = 0  # only submit() adds; the writer thread only reads
        self._reported_dropped = 0
        self._lines = AuditLines()
        self._interval = interval
        self._failing = False
        self._torn = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pixelgate-audit", daemon=True)
        self._thread.start()

    def submit(self, record: CallRecord, status: str, principal: Principal | None) -> None:
        """Queues a finished call (cheap: the line is built and written elsewhere)."""
        if self._queue.qsize() >= self._max_queued:
            self._dropped += 1
            return
        self._queue.put((record, status, principal, time.time()))

    def close(self) -> None:
        """Writes what is queued, then stops (a second close does nothing)."""
        self._stopped.set()
        self._thread.join(10)
        if self._thread.is_alive():  # stuck writing: its descriptor must stay its own
            log.error("audit writer did not finish within 10 s; its lines may be lost")
            return
        if self._owns_fd:
            self._owns_fd = False
            os.close(self._fd)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            self._drain_safely()
        self._drain_safely()

    def _drain_safely(self) -> None:
        try:
            self._drain()
        except Exception as error:  # the audit must outlive any one bad batch
            log.error("audit lines lost: %s", type(error).__name__)

    def _drain(self) -> None:
        # After a failed write a line may be half written: start on a fresh one.
        lines: list[bytes] = [b"\n"] if self._torn else []
        while True:
            try:
                record, status, principal, ended = self._queue.get_nowait()
            except queue.Empty:
                break
            lines.append(self._lines.line(record, status, principal, ended))
        if self._dropped != self._reported_dropped:
            log.error("%d audit lines dropped: the queue was full", self._dropped)
            self._reported_dropped = self._dropped
        if not lines:
            return
        try:
            write_lines(self._fd, lines, to_file=self._to_file)
            self._failing = self._torn = False
        except OSError as error:
            if not self._failing:  # once per outage, not once per batch
                log.error("cannot write audit lines: %s", error.strerror)
            self._failing = self._torn = True


__all__ = [
    "MAX_QUEUED_CALLS",
    "PIPE_ATOMIC_BYTES",
    "AuditWriter",
    "open_audit_destination",
    "write_lines",
]
