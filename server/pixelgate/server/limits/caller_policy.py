"""Per-caller limits from policy: how large a job each kind of caller may ask for.

Rules come from the configuration; the first rule that matches a caller (by
scope, client, subject or a claim such as a tier) applies. A request beyond
its rule's limits is refused with PERMISSION_DENIED naming the rule and the
limit, before it costs anything.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from pixelgate.server.core.config import CallerMatch, CallerRule, ConfigError
from pixelgate.server.core.errors import PermissionDenied
from pixelgate.server.core.generation import GenerationRequest
from pixelgate.server.core.principal import Principal


def _matches(match: CallerMatch | None, principal: Principal) -> bool:
    if match is None:
        return True
    if match.scope is not None:
        return match.scope in principal.scopes
    if match.client_id is not None:
        return principal.client_id == match.client_id
    if match.subject is not None:
        return principal.subject == match.subject
    value = principal.claims.get(match.claim or "")
    return isinstance(value, str) and value == match.equals


class CallerPolicy:
    """Applies the first matching rule's limits to each request."""

    def __init__(self, rules: Sequence[CallerRule]) -> None:
        self._rules = tuple(rules)

    def check_models_exist(self, model_ids: Collection[str]) -> None:
        """Start-up check: every model a rule names must be served."""
        for rule in self._rules:
            unknown = sorted(set(rule.models or ()) - set(model_ids))
            if unknown:
                raise ConfigError(f"policy rule {rule.name!r} names unknown models {unknown}")

    def rule_for(self, principal: Principal) -> CallerRule | None:
        """The rule that applies to `principal`, if any."""
        return next((rule for rule in self._rules if _matches(rule.match, principal)), None)

    def check(self, principal: Principal, request: GenerationRequest) -> None:
        """Raises PermissionDenied naming the first limit `request` exceeds."""
        rule = self.rule_for(principal)
        if rule is None:
            return
        pixels = request.width * request.height
        if rule.models is not None and request.model_id not in rule.models:
            self._deny(rule, f"model {request.model_id} is not allowed")
        if rule.max_pixels is not None and pixels > rule.max_pixels:
            self._deny(rule, f"width x height at most {rule.max_pixels} (asked {pixels})")
        if rule.max_steps is not None and request.steps > rule.max_steps:
            self._deny(rule, f"steps at most {rule.max_steps} (asked {request.steps})")
        images = len(request.seeds)
        if rule.max_images is not None and images > rule.max_images:
            self._deny(rule, f"num_images at most {rule.max_images} (asked {images})")

    @staticmethod
    def _deny(rule: CallerRule, limit: str) -> None:
        raise PermissionDenied(f"request exceeds policy {rule.name!r}: {limit}")


__all__ = ["CallerPolicy"]
