"""Handler filters for the process log: no credential in any line, expected events kept calm.

They sit on the handler that writes the log, not on a logger, so they see every record
that reaches it, from any logger: pixelgate's, grpcio's (which logs undecodable metadata
values whole), any library's. They run in the log's listener thread, where the line is
formatted, so the serving loop pays nothing for them.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable

REDACTED = "[REDACTED]"

_PEM_PRIVATE_KEY = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END[A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)
# No word boundary before `eyJ`: in a bytes repr the token may follow an escape (b'\xffeyJ...').
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*){0,2}")
# A quoted authorization value, in a repr or JSON: everything up to the closing quote.
_QUOTED_AUTHORIZATION = re.compile(
    r"""(authorization['"]?\s*[:=,]\s*(?:value\s*=\s*)?b?(['"]))"""
    r"""(?:[^'"\\\n]++|\\.|(?!\2)['"])++(?=\2)""",
    re.IGNORECASE,
)
# A credential after a scheme or an unquoted `authorization:`; escapes (\xff) are part of it.
_CREDENTIAL = r"(?P<credential>(?:[^\s'\"\\<>,;()\[\]{}]++|\\.)++)"
_SCHEME_CREDENTIAL = re.compile(
    r"(?P<lead>(?P<scheme>bearer|basic)\b[\s:=]*)" + _CREDENTIAL, re.IGNORECASE
)
_UNQUOTED_AUTHORIZATION = re.compile(
    r"(?P<lead>authorization\s*[:=]\s*)(?!(?:bearer|basic)\b)" + _CREDENTIAL, re.IGNORECASE
)
_PLAIN_WORD = re.compile(r"[A-Za-z][a-z]{0,18}[.:!?]?")


def _is_user_password(text: str) -> bool:
    # A Basic credential is base64("user:password"), which can look like a word ("YTpi").
    try:
        decoded = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return b":" in decoded and decoded.isascii() and decoded.decode().isprintable()


def _credential_unless_prose(match: re.Match[str]) -> str:
    # "missing bearer access token", "Basic settings": a plain word of under 20 letters
    # after the scheme is prose; anything else there is a credential.
    credential = match["credential"]
    if _PLAIN_WORD.fullmatch(credential) and not (
        (match.groupdict().get("scheme") or "").lower() == "basic" and _is_user_password(credential)
    ):
        return match[0]
    return match["lead"] + REDACTED


_Replacement = Callable[[re.Match[str]], str] | str

_RULES: tuple[tuple[tuple[str, ...], re.Pattern[str], _Replacement], ...] = (
    (("private key",), _PEM_PRIVATE_KEY, REDACTED),
    (("authorization",), _QUOTED_AUTHORIZATION, r"\1" + REDACTED),
    (("authorization",), _UNQUOTED_AUTHORIZATION, _credential_unless_prose),
    # Schemes before bare JWTs: `Bearer \xffeyJ...` goes as one credential, escapes and all.
    (("bearer", "basic"), _SCHEME_CREDENTIAL, _credential_unless_prose),
    (("eyj",), _JWT, REDACTED),
)
"""In order: the lower-case words a rule needs in the text, its pattern, its replacement."""

_WORDS = tuple(word for words, _pattern, _replacement in _RULES for word in words)


def redact(text: str) -> str:
    """`text` with JWTs, Bearer/Basic credentials, authorization values and PEM keys replaced."""
    # Most lines cost one lower() and a few substring scans; a pattern runs only where its
    # word is in the text (replacing only removes text, so the words found first still hold).
    lowered = text.lower()
    if not any(word in lowered for word in _WORDS):
        return text
    for words, pattern, replacement in _RULES:
        if any(word in lowered for word in words):
            text = pattern.sub(replacement, text)
    return text


class CredentialRedactor(logging.Filter):
    """Renders each record's message, exception and stack once, with credentials replaced.

    The record leaves with its final text in `msg` and no `args` or `exc_info`, so no
    formatter, and no logging error report (which prints raw arguments), can bring the
    originals back.
    """

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self._formatter = formatter

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrites `record` in place; never drops it."""
        try:
            self._clean(record)
        except Exception:
            # Fail closed, and keep the listener thread alive: an exception escaping a
            # filter would end it, and every later record would pile up unwritten.
            record.msg = "a log record was withheld: it could not be checked for credentials"
            record.args, record.exc_info, record.exc_text = None, None, None
            record.stack_info = None
        return True

    def _clean(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # args that don't fit the format: keep what can be said safely
            message = f"{record.msg!s} (log arguments did not fit: {record.args!r})"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)


GRPC_CORE_LOGGER = "grpc._cython.cygrpc"
"""grpcio's Cython layer: it logs both events below, each at ERROR with a traceback."""


def _peer_went_away(record: logging.LogRecord) -> str:
    method = re.search(r"\[([^\]]*)\]", str(record.msg))
    return (
        f"call {method[1] if method else '?'} ended while a send was waiting: "
        "the peer went away (grpcio ExecuteBatchError)"
    )


def _not_utf8(record: logging.LogRecord) -> str:
    # The value is not repeated: it may be any header, credentials included.
    return (
        "a call sent bytes that are not UTF-8 (a metadata value or a method name); "
        "grpcio read them as latin-1 (value not logged)"
    )


def _pil_fallback(record: logging.LogRecord) -> str:
    return "transformers: image processors use their PIL backend (torchvision is not installed)"


_EXPECTED_EVENTS: tuple[
    tuple[str, re.Pattern[str], int, Callable[[logging.LogRecord], str]], ...
] = (
    (
        GRPC_CORE_LOGGER,
        re.compile("^ExecuteBatchError raised in core"),
        logging.INFO,
        _peer_went_away,
    ),
    (GRPC_CORE_LOGGER, re.compile("^Invalid encoding on "), logging.WARNING, _not_utf8),
    # PIL is the backend pixelgate wants (a torchvision build must match torch's exactly).
    (
        "transformers.",
        re.compile(r"requires torchvision \(not installed\)"),
        logging.DEBUG,
        _pil_fallback,
    ),
)
"""(logger name prefix, message pattern) -> the level and the one line a record becomes."""


class ExpectedEventDemoter(logging.Filter):
    """Turns library records of expected events into one line at a calmer level.

    A stream cancelled while its send waits on a stalled reader, and a client that sends
    a metadata value that is not UTF-8, are events of a working server, not crashes
    (grpcio logs each at ERROR with a traceback); transformers' notice that it uses PIL
    is start-up noise.
    A record demoted below `threshold` (the configured log level) is dropped.
    """

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self._threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrites a known expected record in place; keeps every other record as it is."""
        if not isinstance(record.msg, str):
            return True
        for logger, pattern, level, line in _EXPECTED_EVENTS:
            if not (record.name.startswith(logger) and pattern.search(record.msg)):
                continue
            record.msg, record.args = line(record), None
            record.levelno, record.levelname = level, logging.getLevelName(level)
            record.exc_info, record.exc_text, record.stack_info = None, None, None
            return level >= self._threshold
        return True


__all__ = ["REDACTED", "CredentialRedactor", "ExpectedEventDemoter", "redact"]
