"""Principal labels: named while under the cap, "other" past it."""

from __future__ import annotations

from pixelgate.server.core.principal import Principal
from pixelgate.server.metrics.principals import OTHER, PrincipalLabels


def _caller(subject: str, client_id: str | None = None) -> Principal:
    return Principal(
        issuer="https://issuer", subject=subject, scopes=frozenset(), client_id=client_id
    )


def test_the_first_callers_keep_their_names_and_the_rest_share_one() -> None:
    """At most `cap` distinct labels, however many callers come."""
    labels = PrincipalLabels(cap=2)
    assert labels.label(_caller("a", client_id="app-a")) == "app-a"
    assert labels.label(_caller("b")) == "b"
    assert labels.label(_caller("c")) == OTHER
    assert labels.label(_caller("a", client_id="app-a")) == "app-a"  # known ones stay
    assert labels.label(None) == OTHER  # refused before authentication
