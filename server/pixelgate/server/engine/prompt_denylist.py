"""The prompt denylist: a prompt holding a listed phrase never reaches the GPU.

Every image of such a request is reported filtered (FINISH_REASON_FILTERED, no
bytes) at once. Pure text matching: no model, no device.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path


def _normalized(text: str) -> str:
    # Compatibility forms, case and spacing cannot smuggle a phrase past the list.
    folded = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", folded).strip()


class PromptDenylist:
    """Phrases that block a prompt: case-insensitive, whole words, spacing ignored."""

    def __init__(self, phrases: Iterable[str]) -> None:
        words = sorted({_normalized(p) for p in phrases if _normalized(p)}, key=len, reverse=True)
        self._pattern = (
            re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b") if words else None
        )

    @classmethod
    def from_settings(cls, phrases: Sequence[str], path: Path | None) -> PromptDenylist:
        """The configured phrases plus those of the file, one per line (# comments)."""
        extra: list[str] = []
        if path is not None:
            lines = path.read_text(encoding="utf-8").splitlines()
            extra = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
        return cls([*phrases, *extra])

    def blocks(self, *texts: str) -> bool:
        """True when any of `texts` holds a listed phrase."""
        if self._pattern is None:
            return False
        return any(self._pattern.search(_normalized(text)) for text in texts)


__all__ = ["PromptDenylist"]
