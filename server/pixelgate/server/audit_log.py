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
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio

from pixelgate.server.call_record import CallRecord, open_record
from pixelgate.server.interception import CallWrapper
from pixelgate.server.principal import Principal, maybe_current_principal

log = logging.getLogger("pixelgate.audit")


def audit_entry(record: CallRecord, status: str, principal: Principal | None) -> dict[str, Any]:
    """The audit line's fields for one finished call."""
    return {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "event": "call",
        "method": record.method,
        "status": status,
        "duration_ms": round((time.perf_counter() - record.started) * 1000, 1),
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


class AuditLog(CallWrapper):
    """Writes the audit line of every call it wraps (outermost, to see the final status)."""

    @asynccontextmanager
    async def around(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        record = open_record(method, context.peer())
        status = "OK"
        try:
            yield
        except grpc.aio.AbortError:
            code = context.code()
            status = code.name if code is not None else "UNKNOWN"
            raise
        except BaseException:
            status = "CANCELLED"
            raise
        finally:
            if log.isEnabledFor(logging.INFO):
                entry = audit_entry(record, status, maybe_current_principal())
                log.info(json.dumps(entry, separators=(",", ":")))


__all__ = ["AuditLog", "audit_entry"]
