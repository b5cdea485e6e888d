"""Principal labels, only where a setting asks for them, and never more than a cap of them."""

from __future__ import annotations

from pixelgate.server.core.principal import Principal

OTHER = "other"
"""The label of every principal past the cap (and of calls refused before authentication)."""


class PrincipalLabels:
    """The first `cap` distinct callers keep their own label; the rest share "other".

    A caller is named by its token's client id, else its subject: what an operator knows
    a client by. The label set stays bounded however many callers come and go.
    """

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._known: set[str] = set()

    def label(self, principal: Principal | None) -> str:
        """The label for `principal` (None: not authenticated)."""
        if principal is None:
            return OTHER
        name = principal.client_id or principal.subject
        if name in self._known:
            return name
        if len(self._known) < self._cap:
            self._known.add(name)
            return name
        return OTHER


__all__ = ["OTHER", "PrincipalLabels"]
