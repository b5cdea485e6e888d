"""Which jobs may share one pipeline call: only those whose images would not change by it."""

from __future__ import annotations

from dataclasses import replace

from pixelgate.server.core.generation import GenerationRequest
from pixelgate.server.core.image_format import ImageFormat

FOX = GenerationRequest(
    model_id="tiny-sdxl",
    prompt="a red fox",
    negative_prompt="",
    width=64,
    height=64,
    steps=3,
    guidance_scale=7.5,
    seeds=(500,),
    output_format=ImageFormat.PNG,
)


def test_jobs_differing_in_prompt_seed_or_format_share_a_batch():
    """Prompts, seeds and output settings are per image: batching them changes nothing."""
    other = replace(FOX, prompt="a blue bird", seeds=(600, 601), output_format=ImageFormat.JPEG)
    assert other.batch_key == FOX.batch_key


def test_an_empty_negative_prompt_does_not_share_a_batch_with_a_set_one():
    """SDXL zeroes an empty negative only when the whole call has none: keep them apart."""
    assert replace(FOX, negative_prompt="blurry").batch_key != FOX.batch_key
    assert (
        replace(FOX, negative_prompt="blurry").batch_key
        == replace(FOX, negative_prompt="low quality").batch_key
    )
