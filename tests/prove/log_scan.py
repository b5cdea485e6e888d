"""The last check: every server log and audit file, read once all servers have stopped.

Fails on a traceback, an ERROR line not known to be expected, an INTERNAL or
UNKNOWN status, any fragment of a token minted in the run (its payload or
signature), of a private key, or a prompt sent; and on a server that did not
exit 0. Each finding names the scenario that was running when it was written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .fleet import ServerProcess
from .identity import Identities
from .report import Outcome

ERROR_LINE = re.compile(rb"^\S+ \S+ (ERROR|CRITICAL) |^[EF]\d{4} \d")
"""A pixelgate log record at ERROR or worse, or a gRPC core (absl) E/F line."""

EXPECTED_ERRORS: tuple[re.Pattern[bytes], ...] = (
    # gRPC core refusing a request whose header list is over its hard limit (the
    # malformed scenario sends 2000 headers): the refusal's long grpc-message does not
    # fit the response's header limit, so core drops it and logs this at E level. The
    # caller still gets RESOURCE_EXHAUSTED; Python logging cannot filter core's lines.
    re.compile(rb"^E\d{4} .* hpack_encoder\.cc:\d+\] Ignoring key value pair due to size limit"),
)
"""ERROR lines that hostile input causes and that are not faults; counted, not failed."""

INTERNAL = re.compile(rb'"status":"(INTERNAL|UNKNOWN)"|\bINTERNAL\b|StatusCode\.UNKNOWN')

WINDOW = 16
"""A run of this many characters of a secret in a log counts as a leak."""

RUN = re.compile(rb"[A-Za-z0-9_+/=-]{%d,}" % WINDOW)
MARKER = re.compile(rb"prove-[0-9a-f]{12}")


@dataclass(frozen=True)
class Mark:
    """Where each server's files ended when a scenario began."""

    scenario: str
    offsets: dict[Path, int]


def files_of(server: ServerProcess) -> list[Path]:
    """The files a server wrote: its log (stderr), stdout and audit lines."""
    return [server.stderr_path, server.stdout_path, server.audit_path]


def mark(scenario: str, servers: Iterable[ServerProcess]) -> Mark:
    """Remembers the current end of every server file, as `scenario` begins."""
    offsets = {}
    for server in servers:
        for path in files_of(server):
            offsets[path] = path.stat().st_size if path.exists() else 0
    return Mark(scenario, offsets)


class Secrets:
    """Every 16-character window of every secret, for a fast membership test."""

    def __init__(self, ids: Identities) -> None:
        self.windows: dict[bytes, str] = {}
        for token in ids.tokens:
            _, payload, signature = token.split(".")
            self._add(payload, "a token payload")
            self._add(signature, "a token signature")
        for fragment in ids.key_fragments():
            self._add(fragment, "a private key")
        self.prompts = {prompt.rsplit(" ", 1)[-1].encode() for prompt in ids.prompts}

    def _add(self, secret: str, what: str) -> None:
        data = secret.encode()
        for start in range(len(data) - WINDOW + 1):
            self.windows.setdefault(data[start : start + WINDOW], what)

    def found_in(self, line: bytes) -> str | None:
        """What secret `line` holds part of, if any."""
        for run in RUN.findall(line):
            for start in range(len(run) - WINDOW + 1):
                what = self.windows.get(run[start : start + WINDOW])
                if what:
                    return what
        if any(marker in self.prompts for marker in MARKER.findall(line)):
            return "a prompt"
        return None


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    if not path.exists():
        return
    offset = 0
    for line in path.read_bytes().splitlines(keepends=True):
        yield offset, line
        offset += len(line)


def _scenario_at(marks: list[Mark], path: Path, offset: int) -> str:
    during = "start-up"
    for each in marks:
        if each.offsets.get(path, 0) <= offset:
            during = each.scenario
    return during


def _shown(line: bytes) -> str:
    """A line fit to print: secrets-like runs elided, cut short."""
    text = RUN.sub(b"...", line.strip()).decode("utf-8", "replace")
    return text[:100]


def scan(servers: list[ServerProcess], ids: Identities, marks: list[Mark], out: Outcome) -> None:
    """Reads every file of every server; fails `out` on each kind of finding."""
    secrets = Secrets(ids)
    counts = dict.fromkeys(
        ("lines", "tracebacks", "errors", "expected_errors", "internal", "secrets"), 0
    )
    first: dict[str, str] = {}
    for server in servers:
        for path in files_of(server):
            for offset, line in _lines(path):
                counts["lines"] += 1
                where = f"{path.name} during {_scenario_at(marks, path, offset)}"
                kinds = []
                if b"Traceback" in line:
                    kinds.append(("tracebacks", f"{where}: {_shown(line)}"))
                if ERROR_LINE.match(line):
                    expected = any(p.search(line) for p in EXPECTED_ERRORS)
                    kind = "expected_errors" if expected else "errors"
                    kinds.append((kind, f"{where}: {_shown(line)}"))
                if INTERNAL.search(line):
                    kinds.append(("internal", f"{where}: {_shown(line)}"))
                leaked = secrets.found_in(line)
                if leaked:
                    kinds.append(("secrets", f"{leaked} in {where}"))
                for kind, text in kinds:
                    counts[kind] += 1
                    first.setdefault(kind, text)
    out.note(" ".join(f"{kind}={n}" for kind, n in counts.items()))
    for kind in ("tracebacks", "errors", "internal", "secrets"):
        if counts[kind]:
            out.fail(f"{counts[kind]} {kind}, first: {first[kind]}")
    exits = {server.name: server.exit_code for server in servers}
    out.note("exits=" + ",".join(f"{name}:{code}" for name, code in exits.items()))
    bad = {name: code for name, code in exits.items() if code != 0}
    out.check(not bad, f"servers did not exit 0: {bad}")
