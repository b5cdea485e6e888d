"""Load: C callers x N generations through the Python client, every image verified."""

from __future__ import annotations

import threading
import time

from pixelgate.client import PixelgateError

from .calls import check_png, client, in_threads, status_of
from .plan import Context
from .report import Outcome

SIZE = (64, 64)
STEPS = 2
PROMPTS = ("a lighthouse on a cliff at dusk", "ein Leuchtturm, 灯台, فنار", "a red fox 🦊 in snow")


def run(ctx: Context, out: Outcome) -> None:
    """Every generation returns one whole PNG (size, SHA-256, decoded) and is audited OK."""
    server = ctx.server("main")
    callers, generations = ctx.sizes.load_callers, ctx.sizes.load_generations
    audited_before = len(server.audit_entries())
    rng = ctx.random("load")
    seeds = [[rng.randrange(2**32) for _ in range(generations)] for _ in range(callers)]
    verified = 0
    problems: list[str] = []
    lock = threading.Lock()

    def caller(index: int) -> None:
        nonlocal verified
        token = ctx.ids.mint(f"load-{index}", scopes=["images:generate"])
        with client(ctx.ids, server.target, token) as pixelgate:
            for seed in seeds[index]:
                prompt = ctx.ids.prompt(PROMPTS[seed % len(PROMPTS)])
                started = time.monotonic()
                try:
                    images = pixelgate.generate(
                        prompt, width=SIZE[0], height=SIZE[1], steps=STEPS, seed=seed, timeout=60
                    )
                except PixelgateError as error:
                    out.record(status_of(error), time.monotonic() - started)
                    with lock:
                        problems.append(f"{status_of(error)}: {error.details[:80]}")
                    continue
                out.record("OK", time.monotonic() - started)
                faults = [check_png(image, SIZE) for image in images]
                with lock:
                    if len(images) == 1 and faults == [None]:
                        verified += 1
                    else:
                        problems.append(f"{len(images)} images, {faults}")

    hung, errors = in_threads(caller, range(callers), callers, timeout=300)
    wanted = callers * generations
    out.note(f"verified={verified}/{wanted}")
    for error in errors:
        out.fail(error)
    out.check(hung == 0, f"{hung} callers hung")
    out.check(verified == wanted, f"lost or bad images: {problems[:3]}")
    entries = server.wait_audit(audited_before + wanted, timeout=5)[audited_before:]
    generated = [e for e in entries if e["method"].endswith("/GenerateImage")]
    ok_lines = sum(1 for e in generated if e["status"] == "OK")
    out.check(ok_lines >= verified, f"audit has {ok_lines} OK lines for {verified} images")
