"""The channel's service config: gRPC balances, health-checks and retries for us.

`round_robin` spreads calls over every address the target resolves to;
`healthCheckConfig` makes gRPC watch each replica's health service, so one
that says NOT_SERVING (draining, model not ready) gets no new calls; the
`retryPolicy` retries a call refused with UNAVAILABLE (a replica that cannot
take it now) on another replica, after the server's `grpc-retry-pushback-ms`
if it sent one. gRPC retries only before any response reached the caller,
so an image is never generated twice for one call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

HEALTH_SERVICE = "pixelgate.v1.ImageService"
"""The health service name a replica reports its readiness under."""

SERVICE = "pixelgate.v1.ImageService"
"""The service whose methods the retry policy covers."""


@dataclass(frozen=True)
class ServiceConfig:
    """How the channel spreads, health-checks and retries calls across replicas.

    RESOURCE_EXHAUSTED (the caller over its rate or quota) is never in the
    retryable statuses: every replica would refuse it the same way.
    """

    max_attempts: int = 3
    """Tries per call in all, first included (gRPC caps this at 5); 1 = no retries."""
    initial_backoff: float = 0.1
    """Seconds before the first retry when the server sent no pushback (jittered)."""
    max_backoff: float = 1.0
    """The longest backoff between retries, in seconds."""
    backoff_multiplier: float = 2.0
    """Each backoff is this many times the one before."""
    health_service: str | None = HEALTH_SERVICE
    """The health service name to watch; None turns client-side health checking off."""

    def as_json(self) -> str:
        """The service config as grpc's `grpc.service_config` channel option takes it."""
        config: dict[str, object] = {"loadBalancingConfig": [{"round_robin": {}}]}
        if self.health_service is not None:
            config["healthCheckConfig"] = {"serviceName": self.health_service}
        if self.max_attempts > 1:
            config["methodConfig"] = [
                {
                    "name": [{"service": SERVICE}],
                    "retryPolicy": {
                        "maxAttempts": self.max_attempts,
                        "initialBackoff": f"{self.initial_backoff:.3f}s",
                        "maxBackoff": f"{self.max_backoff:.3f}s",
                        "backoffMultiplier": self.backoff_multiplier,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        return json.dumps(config)

    def channel_options(self) -> list[tuple[str, str]]:
        """The channel options that apply this config (grpcio enables retries by default)."""
        return [("grpc.service_config", self.as_json())]


__all__ = ["HEALTH_SERVICE", "SERVICE", "ServiceConfig"]
