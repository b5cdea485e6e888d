"""Benchmark: how close the engine's finish-time estimates come, and what admission would refuse.

Drives a real in-process engine on the tiny model (CPU, one torch thread) with a
mixed workload:
single jobs one at a time, four compatible jobs at once, a queue behind a
long job, and two callers' bursts. Each job is submitted as the servicer does
(held until its first event is read), and its estimate is the ETA of that
first Queued event. Prints, per estimator, the median and worst relative
error of the estimate against the real time to finish, and how many jobs
admission would have refused wrongly had each caller allowed SLACK x what
the job really took (new: eta x (1 - margin) > deadline; old: eta > deadline).
`--baseline REF` runs the same workload on the engine of a git revision for
comparison; the revision must have today's package layout (from 8b0ead1 on),
since the workload imports the engine by its module paths.

    .venv/bin/python tests/benchmarks/admission_accuracy.py [--baseline REF] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SLACK = 1.25
"""A caller's deadline in the wrongly-refused count: this many times what its job took."""


async def _engine() -> Any:
    from pixelgate.server.core.config import load_settings
    from pixelgate.server.engine.engine import GenerationEngine
    from pixelgate.server.engine.memory_guard import MemoryGuard
    from pixelgate.server.models.registry import ModelRegistry, ModelState
    from pixelgate.server.models.runtime import load_model

    settings = load_settings(None, engine={"devices": ["cpu"]})
    registry = await asyncio.to_thread(
        ModelRegistry.from_settings,
        settings.models,
        settings.default_model_id,
        ["cpu"],
        settings.cache_dir,
    )
    engine = GenerationEngine(
        registry,
        ["cpu"],
        settings=settings.engine,
        loader=lambda model, device: load_model(model, device, settings.cache_dir),
        memory=MemoryGuard(None),
    )
    await engine.start()
    model = registry[settings.default_model_id]
    while model.state is not ModelState.READY:
        if model.state is ModelState.FAILED:
            raise RuntimeError("the tiny model failed to load")
        await asyncio.sleep(0.05)
    return engine


class Tracked:
    """A submitted job: its estimate at admission, and its real time to finish once drained."""

    def __init__(self, engine: Any, phase: str, caller: str, steps: int, images: int) -> None:
        from pixelgate.server.core.generation import GenerationRequest
        from pixelgate.server.core.image_format import ImageFormat

        request = GenerationRequest(
            model_id=engine.registry.default_model,
            prompt="a lighthouse",
            negative_prompt="",
            width=64,
            height=64,
            steps=steps,
            guidance_scale=7.5,
            seeds=tuple(range(images)),
            output_format=ImageFormat.PNG,
        )
        self.phase = phase
        self._engine = engine
        self.submitted = time.monotonic()
        self.job = engine.submit(request, caller=caller, hold=True)
        admission = getattr(engine, "admission", None)  # the old engine has no margin
        self.margin = 0.0 if admission is None else admission.margin
        self._events: AsyncIterator[Any] = self.job.events()
        self.eta: float | None = None
        self.actual = 0.0
        self.running = asyncio.Event()
        """Set at its first step."""

    async def first_event(self) -> None:
        """Reads the Queued event (the estimate), then lets the job start."""
        self.eta = (await anext(self._events)).eta
        self._engine.release(self.job)

    async def finish(self) -> None:
        """Reads every event to the end."""
        from pixelgate.server.core.generation import StepDone

        async for event in self._events:
            if isinstance(event, StepDone):
                self.running.set()
        self.actual = time.monotonic() - self.submitted

    def sample(self) -> dict[str, Any]:
        """What the report needs of this job."""
        return {"phase": self.phase, "eta": self.eta, "actual": self.actual, "margin": self.margin}


async def _at_once(engine: Any, phase: str, jobs: Sequence[tuple[str, int, int]]) -> list[Tracked]:
    """Submits (caller, steps, images) jobs together, as concurrent calls arrive; waits for all."""
    tracked = [Tracked(engine, phase, caller, steps, images) for caller, steps, images in jobs]
    for each in tracked:
        await each.first_event()
    await asyncio.gather(*(each.finish() for each in tracked))
    return tracked


async def _round(engine: Any) -> list[Tracked]:
    done: list[Tracked] = []
    for steps in (20, 60, 100):
        done += await _at_once(engine, "single", [("solo", steps, 1)])
    done += await _at_once(engine, "batch of 4", [(f"caller-{i}", 100, 1) for i in range(4)])

    long = Tracked(engine, "behind a long job", "long", 100, 2)
    await long.first_event()
    long_done = asyncio.create_task(long.finish())
    await long.running.wait()
    behind = [
        Tracked(engine, "behind a long job", caller, steps, images)
        for caller, steps, images in (("q1", 60, 1), ("q2", 60, 1), ("q3", 30, 2))
    ]
    for each in behind:
        await each.first_event()
    await asyncio.gather(long_done, *(each.finish() for each in behind))
    done += [long, *behind]

    done += await _at_once(engine, "two callers", [("alice", 40, 1)] * 4 + [("bob", 80, 1)] * 2)
    return done


async def _measure(rounds: int) -> list[dict[str, Any]]:
    engine = await _engine()
    try:
        samples = []
        for _ in range(rounds):
            samples += [each.sample() for each in await _round(engine)]
        return samples
    finally:
        await engine.aclose()


def _run_child(rounds: int, source: Path | None) -> list[dict[str, Any]]:
    """The workload in a fresh process: this tree's engine, or the one under `source`."""
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    output = subprocess.run(
        [sys.executable, __file__, "--child", "--rounds", str(rounds)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    samples: list[dict[str, Any]] = json.loads(output.strip().splitlines()[-1])
    return samples


def _extract(ref: str, into: Path) -> Path:
    """The server package as it was at git revision `ref`, under `into`."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", ref, "server/pixelgate"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "server"


def _errors(samples: Sequence[dict[str, Any]]) -> list[float]:
    return [(s["eta"] - s["actual"]) / s["actual"] for s in samples if s["eta"] is not None]


def _summary(name: str, samples: Sequence[dict[str, Any]]) -> list[str]:
    errors = _errors(samples)
    if not errors:
        return [f"{name}: no estimates"]
    worst = max(errors, key=abs)
    refused = sum(
        1
        for s in samples
        if s["eta"] is not None and s["eta"] * (1 - s["margin"]) > SLACK * s["actual"]
    )
    lines = [
        f"{name}: {len(errors)} jobs, |error| median {statistics.median(map(abs, errors)):.0%},"
        f" worst {worst:+.0%}; wrongly refused at {SLACK}x: {refused}"
        f" (final margin {samples[-1]['margin']:.2f})"
    ]
    for phase in dict.fromkeys(s["phase"] for s in samples):
        of_phase = _errors([s for s in samples if s["phase"] == phase])
        if of_phase:
            lines.append(
                f"    {phase:<18} median {statistics.median(map(abs, of_phase)):4.0%}"
                f"  worst {max(of_phase, key=abs):+5.0%}"
            )
    return lines


def main() -> None:
    """Runs the workload on this tree's engine (and a baseline revision's), prints the errors."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", metavar="REF", help="git revision with the old estimator")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        # One intra-op thread: on a shared machine, threads that spin at barriers while
        # their peers wait for a core make step times swing tenfold.
        torch.set_num_threads(1)
        print(json.dumps(asyncio.run(_measure(args.rounds))))
        return

    started = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        if args.baseline:
            old = _extract(args.baseline, Path(scratch))
            results[f"old ({args.baseline})"] = _run_child(args.rounds, old)
        results["new"] = _run_child(args.rounds, None)
    elapsed = time.perf_counter() - started
    print(
        f"admission accuracy: tiny model, CPU, 64x64; {args.rounds} rounds of single jobs,"
        f" a batch of 4, a queue behind a long job, two callers ({elapsed:.0f} s)"
    )
    print("error = (estimated - actual) / actual, estimate = ETA of the first Queued event")
    for name, samples in results.items():
        print("\n".join(_summary(name, samples)))


if __name__ == "__main__":
    main()
