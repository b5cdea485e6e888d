"""The audit writer's output: whole lines, few system calls, none split across writes."""

from __future__ import annotations

import json
import os
import time

import pytest

from pixelgate.server.audit import writer as audit_writer
from pixelgate.server.audit.writer import PIPE_ATOMIC_BYTES, write_lines


def _recorded_writes(monkeypatch) -> list[bytes]:
    writes: list[bytes] = []

    def write(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return len(data)

    monkeypatch.setattr(audit_writer.os, "write", write)
    return writes


def test_lines_are_grouped_into_writes_that_never_split_a_line(monkeypatch):
    writes = _recorded_writes(monkeypatch)
    lines = [f'{{"n":{i},"pad":"{"x" * 300}"}}\n'.encode() for i in range(40)]

    write_lines(99, lines)

    assert b"".join(writes) == b"".join(lines)
    assert len(writes) < len(lines)
    for data in writes:
        assert len(data) <= PIPE_ATOMIC_BYTES
        assert data.endswith(b"\n")


def test_a_line_longer_than_a_pipe_write_goes_alone_and_whole(monkeypatch):
    writes = _recorded_writes(monkeypatch)
    long = b"y" * (PIPE_ATOMIC_BYTES * 2) + b"\n"

    write_lines(99, [b"a\n", long, b"b\n"])

    assert writes == [b"a\n", long, b"b\n"]


def test_partial_writes_are_continued(monkeypatch):
    received: list[bytes] = []

    def write_half(fd: int, data: bytes) -> int:
        half = max(1, len(data) // 2)
        received.append(bytes(data[:half]))
        return half

    monkeypatch.setattr(audit_writer.os, "write", write_half)
    lines = [b"%d\n" % i for i in range(500)]

    write_lines(99, lines)

    assert b"".join(received) == b"".join(lines)


def _writer_to(path, **options):
    from pixelgate.server.audit.writer import AuditWriter

    return AuditWriter(str(path), interval=0.01, **options)


def _record(method: str = "/m"):
    from pixelgate.server.rpc.call_record import CallRecord

    return CallRecord(method=method, peer="ipv4:127.0.0.1:1")


def test_a_failed_write_never_glues_two_lines_together(tmp_path, monkeypatch):
    """A write that fails part-way leaves the next batch starting on a line of its own."""
    path = tmp_path / "audit.jsonl"
    writer = _writer_to(path)
    real_write = os.write
    failures = iter([True])

    def flaky(fd: int, data: bytes) -> int:
        if next(failures, False):
            real_write(fd, bytes(data[:5]))  # part of a line, then the disk fills up
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(audit_writer.os, "write", flaky)
    writer.submit(_record("/first"), "OK", None)
    time.sleep(0.2)
    writer.submit(_record("/second"), "OK", None)
    writer.close()

    lines = path.read_text().splitlines()
    assert lines[0] == '{"tim'  # the torn fragment stays alone on its line
    assert [json.loads(line)["method"] for line in lines[1:] if line] == ["/second"]


def test_a_full_queue_drops_and_counts_instead_of_growing(tmp_path, caplog):
    writer = _writer_to(tmp_path / "audit.jsonl", max_queued=0)
    writer.submit(_record(), "OK", None)
    writer.close()
    assert (tmp_path / "audit.jsonl").read_text() == ""
    assert "1 audit lines dropped" in caplog.text


def test_a_destination_open_to_every_user_is_refused(tmp_path):
    from pixelgate.server.core.config import ConfigError

    path = tmp_path / "audit.jsonl"
    path.touch(mode=0o644)
    with pytest.raises(ConfigError, match="every user"):
        audit_writer.open_audit_destination(str(path))


def test_a_destination_that_is_not_a_regular_file_is_refused(tmp_path):
    from pixelgate.server.core.config import ConfigError

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises((ConfigError, OSError)):
        audit_writer.open_audit_destination(str(fifo))
    with pytest.raises(OSError):
        audit_writer.open_audit_destination(str(link))  # never followed
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("name, fd", [("stderr", 2), ("stdout", 1)])
def test_standard_streams_are_used_but_never_closed(name, fd):
    assert audit_writer.open_audit_destination(name) == (fd, False)


def test_a_regular_file_gets_the_whole_batch_in_one_write(monkeypatch):
    writes = _recorded_writes(monkeypatch)
    lines = [b"z" * 1000 + b"\n" for _ in range(10)]

    write_lines(99, lines, to_file=True)

    assert writes == [b"".join(lines)]


def test_an_audit_line_is_one_json_object_with_every_field():
    from pixelgate.server.audit.lines import AuditLines
    from pixelgate.server.core.principal import Principal
    from pixelgate.server.rpc.call_record import CallRecord

    record = CallRecord(method="/pixelgate.v1.ImageService/GenerateImage", peer="ipv6:[::1]:5")
    record.duration = 0.01234
    record.cost_charged = 0.03125
    record.parameters = {"width": 64, "model": "tiny"}
    record.prompt_sha256 = "ab" * 32
    record.image_sha256s = ["cd" * 32]
    principal = Principal(
        issuer="https://issuer.example",
        subject='we "quote"\n and \u2028 break',
        scopes=frozenset({"images:generate"}),
        client_id=None,
        certificate_identity="spiffe://example/client",
    )
    lines = AuditLines()

    line = lines.line(record, "OK", principal, ended=1700000000.0456)
    again = lines.line(record, "OK", principal, ended=1700000001.5)

    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "time": "2023-11-14T22:13:20.045+00:00",
        "event": "call",
        "method": "/pixelgate.v1.ImageService/GenerateImage",
        "status": "OK",
        "duration_ms": 12.3,
        "peer": "ipv6:[::1]:5",
        "principal": {
            "iss": "https://issuer.example",
            "sub": 'we "quote"\n and \u2028 break',
            "client_id": None,
            "certificate": "spiffe://example/client",
        },
        "gpu_cost": 0.031,
        "request": {"width": 64, "model": "tiny"},
        "prompt_sha256": "ab" * 32,
        "image_sha256": ["cd" * 32],
    }
    assert json.loads(again)["time"] == "2023-11-14T22:13:21.500+00:00"


def test_an_unauthenticated_call_has_no_principal_in_its_line():
    from pixelgate.server.audit.lines import AuditLines
    from pixelgate.server.rpc.call_record import CallRecord

    line = AuditLines().line(CallRecord(method="/m", peer="p"), "UNAUTHENTICATED", None, 0.0)

    entry = json.loads(line)
    assert entry["principal"] is None
    assert entry["request"] is None
    assert entry["image_sha256"] == []
    assert entry["time"] == "1970-01-01T00:00:00.000+00:00"


def test_a_call_ended_for_a_reason_its_status_does_not_tell_says_why():
    """A CANCELLED call whose reader stalled carries `reason`; a line without one has no key."""
    from pixelgate.server.audit.lines import AuditLines
    from pixelgate.server.rpc.call_record import CallRecord

    stalled = CallRecord(method="/m", peer="p")
    stalled.reason = "stalled_reader"
    lines = AuditLines()

    entry = json.loads(lines.line(stalled, "CANCELLED", None, 0.0))
    plain = json.loads(lines.line(CallRecord(method="/m", peer="p"), "CANCELLED", None, 0.0))

    assert (entry["status"], entry["reason"]) == ("CANCELLED", "stalled_reader")
    assert "reason" not in plain
