"""Malformed bodies and metadata, fuzzed with a fixed seed: every answer is a documented status.

Bodies (hypothesis, seeded): random bytes, mutated valid GenerateImageRequest
bytes, and valid requests whose prompt, negative prompt or model holds invalid
UTF-8 (lone surrogates, overlong forms, stray bytes), sent as raw bytes over a
raw channel. Every fourth goes without a token and must be UNAUTHENTICATED:
authentication comes before the body is read. Each call is audited.

Metadata: a fixed set of odd cases (no, empty, foreign-scheme, duplicate,
huge, binary and forged authorization values, floods of headers) plus seeded
random ones; values grpcio refuses to send (bytes that are not UTF-8 or not
ASCII) go through grpcurl, which sends any bytes.

An accepted call (the fuzz made a valid request) is cancelled at its first
message. Never UNKNOWN or INTERNAL, never a hang.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import shutil
import string
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from pixelgate.v1 import image_service_pb2 as pb

from .calls import (
    GENERATE,
    LIST_MODELS,
    Metadata,
    bearer,
    first_message,
    status_of,
    tls_channel,
)
from .plan import Context
from .report import Outcome

DOCUMENTED = {
    "OK",
    "INVALID_ARGUMENT",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "NOT_FOUND",
}
"""Answers a malformed call may get ("OK": the fuzz happened to make a valid request)."""

CALL_TIMEOUT_S = 15.0
"""A call not answered by then is a hang."""

BAD_UTF8 = (
    b"\xed\xa0\x80",  # a lone high surrogate (U+D800) as CESU-8 writes it
    b"\xed\xbf\xbf",  # a lone low surrogate
    b"\xc0\xaf",  # an overlong "/"
    b"\xe0\x80\xaf",  # an overlong "/" in three bytes
    b"\xf0\x80\x80\xaf",  # ... and in four
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    b"\xff",
    b"\xfe\xff",
    b"\x80",  # a continuation byte alone
    b"\xe2\x82",  # a sequence cut short
)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


valid_requests = st.builds(
    lambda prompt, side, steps, images, fmt, seed_: pb.GenerateImageRequest(
        prompt=prompt,
        width=side,
        height=side,
        steps=steps,
        num_images=images,
        output_format=fmt,
        seed=seed_,
    ).SerializeToString(),
    prompt=st.text(max_size=40),
    side=st.sampled_from((0, 64, 128)),
    steps=st.integers(0, 4),
    images=st.integers(0, 2),
    fmt=st.integers(0, 3),
    seed_=st.integers(0, 2**64 - 1),
)


@st.composite
def mutated_requests(draw: Any) -> bytes:
    """A valid request's bytes with a few bits flipped, bytes inserted, cut or repeated."""
    body = bytearray(draw(valid_requests))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "insert", "delete", "truncate", "repeat")))
        at = draw(st.integers(0, max(len(body) - 1, 0)))
        if op == "flip" and body:
            body[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            body[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and body:
            del body[at]
        elif op == "truncate":
            del body[at:]
        elif op == "repeat":
            body += body[at:]
    return bytes(body)


@st.composite
def invalid_utf8_requests(draw: Any) -> bytes:
    """A valid request whose prompt, negative prompt or model is replaced by invalid UTF-8."""
    text = draw(st.text(max_size=12)).encode()
    cut = draw(st.integers(0, len(text)))
    payload = text[:cut] + draw(st.sampled_from(BAD_UTF8)) + text[cut:]
    field = draw(st.sampled_from((1, 1, 2, 3)))  # prompt, negative_prompt, model
    return bytes(draw(valid_requests) + _length_delimited(field, payload))  # last one wins


BODIES = {
    "random": st.binary(max_size=300),
    "mutated": mutated_requests(),
    "utf8": invalid_utf8_requests(),
}
"""The kinds of body, taken in turn."""


class Caller:
    """Raw calls to one server: bytes in, the status name out."""

    def __init__(self, ctx: Context, target: str) -> None:
        self.channel = tls_channel(ctx.ids, target)
        self.generate = self.channel.unary_stream(
            GENERATE, request_serializer=None, response_deserializer=None
        )
        self.list_models = self.channel.unary_unary(
            LIST_MODELS, request_serializer=None, response_deserializer=None
        )
        self.examples: dict[str, str] = {}

    def call(self, method: str, body: bytes, metadata: Metadata) -> str:
        """Sends `body`; a stream is cancelled at its first message."""
        try:
            if method == GENERATE:
                stream = self.generate(body, metadata=metadata, timeout=CALL_TIMEOUT_S)
                status, _ = first_message(stream)
                stream.cancel()  # type: ignore[no-untyped-call]
            else:
                self.list_models(body, metadata=metadata, timeout=CALL_TIMEOUT_S)
                status = "OK"
        except grpc.RpcError as error:
            status = status_of(error)
            details = error.details() or ""
        else:
            details = ""
        if status not in DOCUMENTED and status not in self.examples:
            self.examples[status] = details[:80]
        return status


def _fuzz_bodies(ctx: Context, out: Outcome, caller: Caller, token: str) -> Counter[str]:
    """Sends the fuzzed bodies, each kind in turn; every fourth call has no token."""
    kinds: Counter[str] = Counter()
    tokenless: Counter[str] = Counter()

    def send(kind: str, body: bytes) -> None:
        index = sum(kinds.values())
        kinds[kind] += 1
        method = LIST_MODELS if kind == "random" and index % 2 == 0 else GENERATE
        with_token = index % 4 != 0
        started = time.monotonic()
        status = caller.call(method, body, bearer(token) if with_token else ())
        out.record(status, time.monotonic() - started)
        if not with_token:
            tokenless[status] += 1

    for kind, strategy in BODIES.items():
        _fuzz(ctx, strategy, functools.partial(send, kind))
    out.note("bodies=" + ",".join(f"{k}:{n}" for k, n in sorted(kinds.items())))
    wrong = {s: n for s, n in tokenless.items() if s != "UNAUTHENTICATED"}
    out.check(not wrong, f"tokenless malformed calls got {wrong}, not UNAUTHENTICATED")
    return kinds


def _fuzz(ctx: Context, strategy: st.SearchStrategy[bytes], send: Callable[[bytes], None]) -> None:
    """One seeded hypothesis run over `strategy` (one per kind: a mixed strategy would favour
    some kinds), generation only: nothing here fails, so nothing is shrunk."""

    @seed(ctx.seed)
    @settings(
        max_examples=ctx.sizes.fuzz_bodies // len(BODIES),
        phases=[Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=strategy)
    def fuzz(body: bytes) -> None:
        send(body)

    fuzz()


def _grpcurl() -> str | None:
    return shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


def _grpcurl_call(ctx: Context, target: str, authorization: bytes) -> str:
    """A GenerateImage through grpcurl (grpc-go sends header bytes as they are)."""
    binary = _grpcurl()
    if binary is None:
        return "CLIENT_NO_GRPCURL"
    protoset = Path(pb.__file__).parent / "descriptor_set.binpb"
    pki = ctx.ids.pki
    request = json.dumps({"prompt": ctx.ids.prompt("a header"), "steps": 2})
    result = subprocess.run(
        [
            binary.encode(),
            b"-protoset",
            str(protoset).encode(),
            b"-cacert",
            str(pki.ca_cert).encode(),
            b"-cert",
            str(pki.client_cert).encode(),
            b"-key",
            str(pki.client_key).encode(),
            b"-max-time",
            b"%d" % CALL_TIMEOUT_S,
            b"-d",
            request.encode(),
            b"-H",
            b"authorization: " + authorization,
            target.encode(),
            b"pixelgate.v1.ImageService/GenerateImage",
        ],
        capture_output=True,
        timeout=CALL_TIMEOUT_S + 10,
        check=False,
    )
    if result.returncode == 0:
        return "OK"
    match = re.search(rb"Code: (\w+)", result.stderr)
    if match is None:
        return "CLIENT_GRPCURL_FAILED"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", match.group(1).decode()).upper()


def _forged(token: str) -> list[str]:
    header, payload, signature = token.split(".")
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"at+jwt"}').rstrip(b"=")
    return [
        f"{none_header.decode()}.{payload}.",
        f"{header}.{payload}.{signature[:-4]}AAAA",
        f"{header}.{payload[:-2]}{payload[-2:][::-1]}.{signature}",
        f"{payload}.{header}.{signature}",
    ]


def _metadata_cases(ctx: Context, token: str) -> list[tuple[str, Any]]:
    """(route, metadata or header bytes): the fixed odd cases, then seeded random ones."""
    expired = ctx.ids.mint("fuzz-expired", lifetime_seconds=-3600)
    junk = "Bearer " + "x" * 40
    cases: list[tuple[str, Any]] = [
        ("grpc", ()),
        ("grpc", (("authorization", "Bearer"),)),
        ("grpc", (("authorization", "Basic dXNlcjpwYXNz"),)),
        ("grpc", (("authorization", f"bearer {token}"),)),
        ("grpc", (("authorization", f"Bearer  {token} "),)),
        ("grpc", (*bearer(token), ("authorization", junk))),
        ("grpc", (("authorization", junk), *bearer(token))),
        ("grpc", (*bearer(token), *bearer(token))),
        ("grpc", (("authorization", "Bearer " + "A" * 20000),)),
        ("grpc", (*bearer(token), ("x-junk", "A" * 100_000))),
        ("grpc", (*bearer(token), *((f"x-h{i}", "v") for i in range(2000)))),
        ("grpc", (("authorization-bin", token.encode()),)),
        ("grpc", bearer(expired)),
        *(("grpc", bearer(forged)) for forged in _forged(token)),
        ("grpcurl", b"\xff\xfeBearer " + token.encode()),
        ("grpcurl", b"Bearer \xff" + token.encode()),
        ("grpcurl", "Bearer é".encode() + token.encode()),
        ("grpcurl", b"Bearer " + token.encode() + b"\xc0\xaf"),
    ]
    rng = ctx.random("metadata")
    printable = string.ascii_letters + string.digits + string.punctuation + " "
    for _ in range(ctx.sizes.fuzz_metadata - len(cases)):
        name = "".join(
            rng.choices(string.ascii_lowercase + string.digits + "-_.", k=rng.randint(1, 20))
        )
        value = "".join(rng.choices(printable, k=rng.choice((0, 1, 50, 4000, 9000))))
        chars = list(token)
        chars[rng.randrange(len(chars))] = rng.choice(string.ascii_letters)
        auth = rng.choice((bearer(token), bearer("".join(chars)), ()))
        if name.startswith("grpc-") or name.endswith("-bin"):
            name = "x" + name + "x"
        cases.append(("grpc", (*auth, (name, value.strip()))))
    return cases


def run(ctx: Context, out: Outcome) -> None:
    """Every malformed body or metadata gets a documented status, is audited, never hangs."""
    server = ctx.server("main")
    # Hypothesis keeps a cache (constants it read in the code, Unicode tables): in the
    # run's scratch directory, not the working tree.
    set_hypothesis_home_dir(ctx.directory / "hypothesis")
    token = ctx.ids.mint("fuzz")
    caller = Caller(ctx, server.target)
    try:
        audited_before = len(server.audit_entries())
        kinds = _fuzz_bodies(ctx, out, caller, token)
        sent = sum(kinds.values())
        entries = server.wait_audit(audited_before + sent, timeout=10)
        audited = len(entries) - audited_before
        out.note(f"audited={audited}/{sent}")
        out.check(audited >= sent, f"{sent - audited} malformed calls not audited")

        cases = _metadata_cases(ctx, token)
        for route, metadata in cases:
            started = time.monotonic()
            if route == "grpc":
                status = caller.call(GENERATE, _small_request(ctx), metadata)
            else:
                status = _grpcurl_call(ctx, server.target, metadata)
            out.record(status, time.monotonic() - started)
        out.note(f"metadata={len(cases)}")
    finally:
        caller.channel.close()
    odd = {s: n for s, n in out.statuses.items() if s not in DOCUMENTED}
    examples = "; ".join(f"{s}: {d!r}" for s, d in caller.examples.items())
    out.check(
        not odd,
        f"undocumented answers {odd} ({examples})" if examples else f"undocumented answers {odd}",
    )
    out.check(server.alive(), "the server died")


def _small_request(ctx: Context) -> bytes:
    return pb.GenerateImageRequest(
        prompt=ctx.ids.prompt("a header"), steps=2, output_format=pb.OUTPUT_FORMAT_PNG
    ).SerializeToString()
