"""`pixelgate-server` on a simulated device: every UNet call (one denoising step) sleeps first.

    SIMULATED_STEP_SECONDS=0.2 python tests/benchmarks/simulated_device.py --config FILE

The real server runs as deployed (mTLS, auth, limits, engine, the tiny pipeline on the
CPU); only the UNet's forward is wrapped, so a step takes the given device time on top
of the tiny model's own few milliseconds. A sleep holds no core and releases the GIL,
as a kernel running on a GPU does: replicas on one small host then scale as replicas on
GPU hosts would, and a benchmark measures the fleet machinery, not this host's CPUs.
Benchmark code only; nothing in the server knows of it.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any

STEP_SECONDS_VARIABLE = "SIMULATED_STEP_SECONDS"
"""Seconds of simulated device time per UNet call (not a PIXELGATE_ setting: the server
would refuse an unknown one)."""


def simulate_device(step_seconds: float) -> None:
    """Makes every UNet2DConditionModel forward sleep `step_seconds` before computing."""
    from diffusers import UNet2DConditionModel

    forward = UNet2DConditionModel.forward

    @functools.wraps(forward)
    def forward_on_a_simulated_device(self: Any, *args: Any, **kwargs: Any) -> Any:
        time.sleep(step_seconds)
        return forward(self, *args, **kwargs)

    UNet2DConditionModel.forward = forward_on_a_simulated_device


def main() -> int:
    """Patches the step, then runs the server's own entry point with our arguments."""
    simulate_device(float(os.environ[STEP_SECONDS_VARIABLE]))
    from pixelgate.server.__main__ import main as serve

    return serve(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
