"""What the generation flow records about a call, for its audit line and quota metadata.

The per-call record implements it; the data plane writes to it and knows
nothing of where it lives (a context variable, a test's plain object).
"""

from __future__ import annotations

from typing import Any, Protocol

from pixelgate.server.core.quota import Decision, Limit


class CallFacts(Protocol):
    """The facts of one generation call, filled in as they become known."""

    quota: list[tuple[Limit, Decision]]
    """Limits drawn on and their decisions (sent to the caller as `ratelimit` metadata)."""
    cost_charged: float
    """GPU cost units charged, after any refund."""
    parameters: dict[str, Any]
    """Validated image parameters (never the prompt)."""
    prompt_sha256: str | None
    image_sha256s: list[str]


__all__ = ["CallFacts"]
