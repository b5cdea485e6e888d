"""Audit lines: one JSON object per finished call, rendered from its record.

Each line says when, who (issuer, subject, client_id, certificate identity),
what (method, image parameters), with which outcome (status, GPU cost
charged, duration) and the SHA-256 of the prompt and of each image, so an
investigation can match content without the log ever holding a prompt, an
image, a token or a key.
"""

from __future__ import annotations

import datetime as dt
import functools
import json

from pixelgate.server.core.identity_memo import IdentityMemo
from pixelgate.server.core.principal import Principal
from pixelgate.server.rpc.call_record import CallRecord


@functools.lru_cache(maxsize=4096)
def _json_text(value: str | None) -> str:
    # Methods, statuses and peers repeat from call to call: escape each once.
    return json.dumps(value)


class AuditLines:
    """Renders finished calls as audit lines: one JSON object per line.

    Fields: time (UTC, milliseconds), event, method, status, duration_ms, peer,
    principal (iss, sub, client_id, certificate), gpu_cost, request (the
    validated image parameters), prompt_sha256, image_sha256; trace_id (the W3C
    trace id, 32 hex digits), only when the call belongs to a trace; and reason, only
    where the status alone does not say why the call ended ("stalled_reader":
    CANCELLED because its reader stopped reading). What repeats from call to
    call (a caller's principal, the current second) is rendered once, and what
    most calls lack (parameters, images) costs no encoder: this runs for every call.
    """

    def __init__(self, principal_cache_size: int = 1024) -> None:
        self._second = -1
        self._second_text = ""
        self._principals: IdentityMemo[str] = IdentityMemo(principal_cache_size)

    def line(
        self, record: CallRecord, status: str, principal: Principal | None, ended: float
    ) -> bytes:
        """The line for one call that ended at `ended` (time.time())."""
        return (
            f'{{"time":"{self._time(ended)}","event":"call",'
            f'"method":{_json_text(record.method)},"status":{_json_text(status)},'
            f'"duration_ms":{round(record.duration * 1000, 1)!r},'
            f'"peer":{_json_text(record.peer)},"principal":{self._principal(principal)},'
            f'"gpu_cost":{round(record.cost_charged, 3)!r},'
            f'"request":{json.dumps(record.parameters) if record.parameters else "null"},'
            f'"prompt_sha256":{_json_text(record.prompt_sha256)},'
            f'"image_sha256":{json.dumps(record.image_sha256s) if record.image_sha256s else "[]"}'
            f"{_trace_id(record.trace_id)}{_reason(record.reason)}}}\n"
        ).encode()

    def _time(self, ended: float) -> str:
        second = int(ended)
        if second != self._second:
            self._second = second
            self._second_text = dt.datetime.fromtimestamp(second, dt.UTC).strftime(
                "%Y-%m-%dT%H:%M:%S"
            )
        return f"{self._second_text}.{int((ended - second) * 1000):03d}+00:00"

    def _principal(self, principal: Principal | None) -> str:
        if principal is None:
            return "null"
        known = self._principals.get((principal,))
        if known is not None:
            return known
        text = json.dumps(
            {
                "iss": principal.issuer,
                "sub": principal.subject,
                "client_id": principal.client_id,
                "certificate": principal.certificate_identity,
            }
        )
        return self._principals.remember((principal,), text)


def _trace_id(trace_id: str | None) -> str:
    return "" if trace_id is None else f',"trace_id":"{trace_id}"'  # 32 hex digits: no escaping


def _reason(reason: str | None) -> str:
    return "" if reason is None else f',"reason":{_json_text(reason)}'


__all__ = ["AuditLines"]
