"""What each `pixelgate` command does with a connected client; each returns the exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from tqdm import tqdm

from pixelgate.client.client import PixelgateClient
from pixelgate.client.images import GeneratedImage
from pixelgate.v1 import image_service_pb2 as pb

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 130
"""128 + SIGINT, as a shell reports a command stopped by Ctrl-C."""

Command = Callable[[PixelgateClient, argparse.Namespace], int]
"""A command: runs against the client with the parsed arguments, returns the exit code."""


def generate(client: PixelgateClient, args: argparse.Namespace) -> int:
    """Streams images to --output (numbered when several), with a progress bar on a terminal."""
    image_format = args.format or (args.output.suffix.lstrip(".").lower() or "png")
    if image_format not in ("png", "jpeg", "jpg", "webp"):
        print(
            f"pixelgate: cannot tell the image format from {args.output}; use --format",
            file=sys.stderr,
        )
        return EXIT_USAGE
    paths = _output_paths(args.output, args.num_images)
    filtered = 0
    # The bar shows on a terminal only, and is cleared when done: on failure the
    # one error line stays alone.
    bar = tqdm(
        total=None,
        unit="step",
        disable=True if args.quiet else None,
        leave=False,
        file=sys.stderr,
        desc="queued",
    )
    try:
        for event in client.stream(
            args.prompt,
            negative_prompt=args.negative_prompt,
            model=args.model,
            width=args.width,
            height=args.height,
            steps=args.steps,
            guidance_scale=args.guidance_scale,
            seed=args.seed,
            num_images=args.num_images,
            output_format=image_format,
            timeout=args.timeout,
        ):
            if isinstance(event, GeneratedImage) and event.filtered:
                bar.write(f"image {event.index}: withheld by the server's safety policy")
                filtered += 1
            elif isinstance(event, GeneratedImage):
                paths[event.index].write_bytes(event.data)
                bar.write(
                    f"{paths[event.index]}: {event.width}x{event.height} {event.mime_type}, "
                    f"seed {event.seed}, sha256 {event.sha256}"
                )
            elif event.step:
                bar.set_description("generating")
                bar.total = event.total_steps
                bar.update(event.step - bar.n)
    finally:
        bar.close()
    if filtered:
        print(
            f"pixelgate: {filtered} image(s) withheld by the server's safety policy",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


def models(client: PixelgateClient, args: argparse.Namespace) -> int:
    """Prints one line per model: id, default and test marks, state, sizes and steps."""
    for model in client.list_models(timeout=args.timeout):
        default = " (default)" if model.is_default else ""
        test = " [test model]" if model.is_test_model else ""
        state = pb.ModelInfo.State.Name(model.state).removeprefix("STATE_").lower()
        failure = f" ({model.load_error})" if model.load_error else ""
        print(
            f"{model.id}{default}{test} [{state.replace('_', ' ')}{failure}]:"
            f" {model.description}; "
            f"{model.min_size}..{model.max_width}x{model.max_height} px, "
            f"default {model.default_width}x{model.default_height}, "
            f"steps <= {model.max_steps} (default {model.default_steps})"
        )
    return EXIT_OK


def health(client: PixelgateClient, args: argparse.Namespace) -> int:
    """Prints the serving status of --service (the whole server by default)."""
    print(client.health(args.service, timeout=args.timeout))
    return EXIT_OK


COMMANDS: Mapping[str, Command] = {"generate": generate, "models": models, "health": health}
"""Every command the parser offers, by name."""


def _output_paths(output: Path, count: int) -> list[Path]:
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]
