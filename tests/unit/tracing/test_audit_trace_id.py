"""The audit line names the call's trace when it has one, and has no trace_id field otherwise."""

from __future__ import annotations

import json

from pixelgate.server.audit.lines import AuditLines
from pixelgate.server.rpc.call_record import CallRecord

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_the_trace_id_is_in_the_line_only_when_the_call_has_one():
    lines = AuditLines()
    traced = CallRecord(method="/m", trace_id=TRACE_ID, reason="stalled_reader")
    entry = json.loads(lines.line(traced, "CANCELLED", None, 0.0))
    assert entry["trace_id"] == TRACE_ID
    assert entry["reason"] == "stalled_reader"
    assert "trace_id" not in json.loads(lines.line(CallRecord(method="/m"), "OK", None, 0.0))
