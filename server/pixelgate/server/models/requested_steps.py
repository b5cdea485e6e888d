"""Progress in the caller's steps, whatever the scheduler runs.

PNDM (Stable Diffusion 1.5's default) adds Runge-Kutta warm-up steps and
Heun-type schedulers evaluate the model twice a step, so a 20-step request runs
29 or 39 timesteps; callers asked for 20 and must see 1..20.
"""

from __future__ import annotations


class RequestedSteps:
    """Maps the pipeline's timestep index onto 1..requested, each step reported once."""

    def __init__(self, requested: int) -> None:
        self.requested = requested
        self._reported = 0

    def after(self, index: int, timesteps: int) -> int | None:
        """The step finished with timestep `index` (of `timesteps`), or None when no new one."""
        if timesteps <= 0:
            return None
        # Proportional and rounded down: the last timestep, and only it, ends the last step.
        step = min(self.requested, (index + 1) * self.requested // timesteps)
        if step <= self._reported:
            return None
        self._reported = step
        return step


__all__ = ["RequestedSteps"]
