"""Audit: one structured JSON line per call, so usage and abuse can be seen.

Each line says when, who (issuer, subject, client_id, certificate identity),
what (method, image parameters), with which outcome (status, GPU cost
charged, duration) and the SHA-256 of the prompt and of each image, so an
investigation can match content without the log ever holding a prompt, an
image, a token or a key.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import threading
import time
from typing import Any

import grpc
import grpc.aio

from pixelgate.server.call_record import CallRecord, open_record
from pixelgate.server.interception import CallWrapper
from pixelgate.server.principal import Principal, maybe_current_principal

log = logging.getLogger("pixelgate.audit")


def audit_entry(
    record: CallRecord, status: str, principal: Principal | None, *, ended: float
) -> dict[str, Any]:
    """The audit line's fields for one finished call that ended at `ended` (time.time())."""
    return {
        "time": dt.datetime.fromtimestamp(ended, dt.UTC).isoformat(timespec="milliseconds"),
        "event": "call",
        "method": record.method,
        "status": status,
        "duration_ms": round(record.duration * 1000, 1),
        "peer": record.peer,
        "principal": None
        if principal is None
        else {
            "iss": principal.issuer,
            "sub": principal.subject,
            "client_id": principal.client_id,
            "certificate": principal.certificate_identity,
        },
        "gpu_cost": round(record.cost_charged, 3),
        "request": record.parameters or None,
        "prompt_sha256": record.prompt_sha256,
        "image_sha256": record.image_sha256s,
    }


class AuditWriter:
    """Turns finished calls into audit lines on a thread of its own, off the event loop.

    The thread wakes every `interval` seconds and writes what has queued up, so
    a busy server pays no thread switch per call.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pixelgate-audit", daemon=True)
        self._thread.start()

    def submit(self, record: CallRecord, status: str, principal: Principal | None) -> None:
        """Queues a finished call (cheap: the line is built and written elsewhere)."""
        self._queue.put((record, status, principal, time.time()))

    def close(self) -> None:
        """Writes what is queued, then stops."""
        self._stopped.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                record, status, principal, ended = self._queue.get_nowait()
            except queue.Empty:
                return
            entry = audit_entry(record, status, principal, ended=ended)
            log.info(json.dumps(entry, separators=(",", ":")))


class AuditLog(CallWrapper):
    """Audits every call it wraps (outermost, to see the final status)."""

    def __init__(self, writer: AuditWriter) -> None:
        self._writer = writer

    def enter(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> CallRecord:
        return open_record(method, context.peer())

    async def exit(
        self,
        state: CallRecord,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        error: BaseException | None,
    ) -> None:
        state.duration = time.perf_counter() - state.started
        if not log.isEnabledFor(logging.INFO):
            return
        if error is None:
            status = "OK"
        elif isinstance(error, grpc.aio.AbortError):
            code = context.code()
            status = code.name if code is not None else "UNKNOWN"
        elif isinstance(error, Exception):
            status = "UNKNOWN"
        else:
            status = "CANCELLED"  # the caller went away
        self._writer.submit(state, status, maybe_current_principal())


__all__ = ["AuditLog", "AuditWriter", "audit_entry"]
