"""RequestValidator: every GenerateImage field checked, normalized and defaulted."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from pixelgate.server.api.generation_ask import GenerationAsk
from pixelgate.server.api.generation_messages import ask_from
from pixelgate.server.api.validation import RequestInvalid, RequestValidator
from pixelgate.server.core.errors import InvalidArgument, NotFound
from pixelgate.server.core.image_format import ImageFormat
from pixelgate.server.core.model_card import ModelCard
from pixelgate.v1 import image_service_pb2 as pb

MAX_PROMPT_BYTES = 40
MAX_IMAGES = 4
FIXED_SEED = 12345

CARD = ModelCard(
    id="fake",
    description="a fake model for validation tests",
    is_test_model=True,
    min_size=64,
    max_width=512,
    max_height=256,
    default_width=96,
    default_height=128,
    default_steps=10,
    max_steps=50,
    default_guidance_scale=7.5,
    max_prompt_tokens=5,
)


class FakeModel:
    """Has the card and tokenizer validation needs: one token per whitespace-separated word."""

    def __init__(self, card: ModelCard = CARD) -> None:
        self.card = card
        self.counted: list[str] = []

    def count_tokens(self, text: str) -> int:
        self.counted.append(text)
        return len(text.split())


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture
def validator(model: FakeModel) -> RequestValidator:
    return RequestValidator(
        {"fake": model},
        "fake",
        max_prompt_bytes=MAX_PROMPT_BYTES,
        max_images=MAX_IMAGES,
        random_seed=lambda: FIXED_SEED,
    )


def _request(**fields: Any) -> GenerationAsk:
    """The request's fields as the servicer hands them to validation."""
    fields.setdefault("prompt", "a red fox")
    return ask_from(pb.GenerateImageRequest(**fields))


def _invalid(validator: RequestValidator, **fields: Any) -> RequestInvalid:
    with pytest.raises(RequestInvalid) as caught:
        validator.validate(_request(**fields))
    return caught.value


def _only_violation(validator: RequestValidator, field: str, **fields: Any) -> str:
    """Asserts the request breaks exactly one bound, on `field`; returns its description."""
    error = _invalid(validator, **fields)
    assert [v.field for v in error.violations] == [field]
    assert error.message == error.violations[0].description
    return error.violations[0].description


# --- defaults ------------------------------------------------------------------------------


def test_defaults_filled(validator: RequestValidator) -> None:
    """A request with only a prompt gets the model's size, steps, guidance, 1 image, PNG."""
    result = validator.validate(_request())
    assert result.model_id == "fake"
    assert result.prompt == "a red fox"
    assert result.negative_prompt == ""
    assert (result.width, result.height) == (96, 128)
    assert result.steps == 10
    assert result.guidance_scale == 7.5
    assert result.seeds == (FIXED_SEED,)
    assert result.output_format is ImageFormat.PNG


def test_explicit_values_kept(validator: RequestValidator) -> None:
    """Valid explicit fields are passed through unchanged."""
    result = validator.validate(
        _request(
            model="fake",
            negative_prompt="blurry",
            width=512,
            height=64,
            steps=50,
            guidance_scale=30.0,
            seed=7,
            num_images=MAX_IMAGES,
            output_format=pb.OUTPUT_FORMAT_WEBP,
        )
    )
    assert result.negative_prompt == "blurry"
    assert (result.width, result.height, result.steps) == (512, 64, 50)
    assert result.guidance_scale == 30.0
    assert result.seeds == (7, 8, 9, 10)
    assert result.output_format is ImageFormat.WEBP


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (pb.OUTPUT_FORMAT_UNSPECIFIED, ImageFormat.PNG),
        (pb.OUTPUT_FORMAT_PNG, ImageFormat.PNG),
        (pb.OUTPUT_FORMAT_JPEG, ImageFormat.JPEG),
        (pb.OUTPUT_FORMAT_WEBP, ImageFormat.WEBP),
    ],
)
def test_output_formats(validator: RequestValidator, number: int, expected: ImageFormat) -> None:
    """Each OutputFormat maps to its encoding; unspecified means PNG."""
    assert validator.validate(_request(output_format=number)).output_format is expected


def test_zero_guidance_is_explicit_not_default(validator: RequestValidator) -> None:
    """guidance_scale set to 0 turns guidance off rather than falling back to 7.5."""
    assert validator.validate(_request(guidance_scale=0.0)).guidance_scale == 0.0


# --- seeds ---------------------------------------------------------------------------------


def test_random_seed_when_unset(validator: RequestValidator) -> None:
    """Without a seed the random seed is used, and image i gets seed + i."""
    result = validator.validate(_request(num_images=3))
    assert result.seeds == (FIXED_SEED, FIXED_SEED + 1, FIXED_SEED + 2)


def test_default_random_seed_varies(model: FakeModel) -> None:
    """The default seed source gives different non-negative 63-bit seeds per request."""
    validator = RequestValidator({"fake": model}, "fake", max_prompt_bytes=100, max_images=1)
    seeds = {validator.validate(_request()).seeds[0] for _ in range(5)}
    assert len(seeds) > 1
    assert all(0 <= seed < 2**63 for seed in seeds)


def test_explicit_zero_seed_kept(validator: RequestValidator) -> None:
    """An explicit seed of 0 is honoured (it is not 'unset')."""
    assert validator.validate(_request(seed=0, num_images=2)).seeds == (0, 1)


def test_seed_wraps_at_2_pow_64(validator: RequestValidator) -> None:
    """Seeds near 2**64 wrap around to 0 for later images of the batch."""
    result = validator.validate(_request(seed=2**64 - 2, num_images=4))
    assert result.seeds == (2**64 - 2, 2**64 - 1, 0, 1)


# --- prompt --------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["", " ", " \u3000 "])
def test_prompt_required(validator: RequestValidator, prompt: str) -> None:
    """An empty or whitespace-only prompt is refused as required."""
    assert _only_violation(validator, "prompt", prompt=prompt) == "prompt is required"


@pytest.mark.parametrize(
    "prompt",
    [
        "\u200b",  # zero-width space
        "\u200c\u200d",  # zero-width non-joiner, joiner
        "\u2060\ufeff",  # word joiner, byte-order mark
        " \u00ad \u180e\u2061 ",  # soft hyphen, Mongolian vowel separator, function application
        "\U000e0041\U000e007f",  # tag characters
        "\u3164\u115f\ufe0f\u034f",  # Hangul fillers, variation selector, grapheme joiner
    ],
    ids=["zwsp", "zwnj-zwj", "wj-bom", "format-and-spaces", "tags", "default-ignorables"],
)
def test_prompt_of_only_invisible_characters_required(
    validator: RequestValidator, prompt: str
) -> None:
    """A prompt that renders as nothing (format and other ignorable characters) is empty."""
    assert _only_violation(validator, "prompt", prompt=prompt) == "prompt is required"


def test_invisible_characters_beside_visible_text_are_kept(validator: RequestValidator) -> None:
    """Only a prompt of nothing but invisible characters is empty; joiners inside words stay."""
    assert validator.validate(_request(prompt="a\u200dfox")).prompt == "a\u200dfox"
    assert validator.validate(_request(negative_prompt="\u200b\u2060")).negative_prompt == ""


def test_prompt_byte_bound(validator: RequestValidator) -> None:
    """A prompt of exactly the byte bound passes; one byte more is refused."""
    assert validator.validate(_request(prompt="x" * MAX_PROMPT_BYTES)).prompt == "x" * 40
    description = _only_violation(validator, "prompt", prompt="x" * (MAX_PROMPT_BYTES + 1))
    assert f"at most {MAX_PROMPT_BYTES} bytes" in description
    assert f"got {MAX_PROMPT_BYTES + 1}" in description


def test_prompt_bound_counts_utf8_bytes_not_characters(validator: RequestValidator) -> None:
    """21 two-byte characters (42 bytes) exceed a 40-byte bound."""
    description = _only_violation(validator, "prompt", prompt="é" * 21)
    assert "got 42" in description


def test_oversized_prompt_is_not_tokenized(validator: RequestValidator, model: FakeModel) -> None:
    """A prompt over the byte bound is refused without running the tokenizer on it."""
    _invalid(validator, prompt="word " * 100)
    assert model.counted == []


@pytest.mark.parametrize(
    ("prompt", "codepoint"),
    [
        ("ring \x07 bell", "U+0007"),
        ("two\nlines", "U+000A"),
        ("tab\there", "U+0009"),
        ("nul\x00", "U+0000"),
        ("del\x7f", "U+007F"),
        ("c1\x85", "U+0085"),
    ],
)
def test_control_characters_refused(
    validator: RequestValidator, prompt: str, codepoint: str
) -> None:
    """Control characters in the prompt are refused, naming the code point."""
    description = _only_violation(validator, "prompt", prompt=prompt)
    assert "control or bidi-override characters" in description
    assert codepoint in description


@pytest.mark.parametrize("codepoint", [0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2069])
def test_bidi_override_characters_refused(validator: RequestValidator, codepoint: int) -> None:
    """Bidi embeddings, overrides and isolates (Trojan Source) are refused, naming them."""
    description = _only_violation(validator, "prompt", prompt=f"a {chr(codepoint)}fox")
    assert f"U+{codepoint:04X}" in description


def test_violations_travel_as_bad_request_details(validator: RequestValidator) -> None:
    """Every violation is also a google.rpc.BadRequest field violation, for programs."""
    with pytest.raises(RequestInvalid) as caught:
        validator.validate(_request(prompt="", width=100))
    [bad_request] = caught.value.details
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        (v.field, v.description) for v in caught.value.violations
    ]
    assert {v.field for v in bad_request.field_violations} == {"prompt", "width"}


def test_negative_prompt_has_same_bounds(validator: RequestValidator) -> None:
    """negative_prompt is optional but checked like the prompt (bytes, control chars, tokens)."""
    assert validator.validate(_request(negative_prompt="")).negative_prompt == ""
    assert "control" in _only_violation(validator, "negative_prompt", negative_prompt="a\x07")
    assert "bytes" in _only_violation(validator, "negative_prompt", negative_prompt="y" * 41)
    assert "tokens" in _only_violation(validator, "negative_prompt", negative_prompt="a b c d e f")


def test_prompt_nfc_normalized(validator: RequestValidator) -> None:
    """A decomposed 'e' + combining acute becomes the composed 'é'."""
    result = validator.validate(_request(prompt="cafe\u0301", negative_prompt="ne\u0301e"))
    assert result.prompt == "caf\u00e9"
    assert result.negative_prompt == "n\u00e9e"


def test_byte_bound_applies_after_normalization(validator: RequestValidator) -> None:
    """20 decomposed 'é' (60 bytes raw, 40 after NFC) fit a 40-byte bound."""
    prompt = "e\u0301" * 20
    assert len(prompt.encode()) == 60
    assert validator.validate(_request(prompt=prompt)).prompt == "\u00e9" * 20


def test_token_bound(validator: RequestValidator, model: FakeModel) -> None:
    """A prompt of exactly max_prompt_tokens passes; one token more is refused."""
    assert validator.validate(_request(prompt="a b c d e")).prompt == "a b c d e"
    description = _only_violation(validator, "prompt", prompt="a b c d e f")
    assert "at most 5 tokens" in description
    assert "got 6" in description


def test_no_token_bound_when_model_has_none(validator: RequestValidator) -> None:
    """A model without a tokenizer bound accepts any number of tokens within the byte bound."""
    unbounded = FakeModel(dataclasses.replace(CARD, max_prompt_tokens=None))
    validator = RequestValidator(
        {"fake": unbounded}, "fake", max_prompt_bytes=MAX_PROMPT_BYTES, max_images=MAX_IMAGES
    )
    prompt = " ".join("w" * 19)
    assert validator.validate(_request(prompt=prompt)).prompt == prompt


# --- sizes, steps, guidance, count, format -------------------------------------------------


@pytest.mark.parametrize("width", [100, 63, 516])
def test_width_not_multiple_of_8_refused(validator: RequestValidator, width: int) -> None:
    """A width that is not a multiple of 8 is refused with the size bound."""
    description = _only_violation(validator, "width", width=width)
    assert description == f"width must be a multiple of 8 from 64 to 512 (got {width})"


@pytest.mark.parametrize("width", [8, 56, 520, 4096])
def test_width_out_of_range_refused(validator: RequestValidator, width: int) -> None:
    """A width below min_size or above max_width is refused."""
    description = _only_violation(validator, "width", width=width)
    assert "from 64 to 512" in description


@pytest.mark.parametrize("height", [56, 264])
def test_height_out_of_range_refused(validator: RequestValidator, height: int) -> None:
    """A height outside min_size..max_height is refused with the height bound."""
    description = _only_violation(validator, "height", height=height)
    assert "from 64 to 256" in description


def test_size_bounds_inclusive(validator: RequestValidator) -> None:
    """min_size and the max sizes themselves are accepted."""
    result = validator.validate(_request(width=64, height=256))
    assert (result.width, result.height) == (64, 256)


def test_steps_above_max_refused(validator: RequestValidator) -> None:
    """steps above the model's max_steps is refused, naming the bound."""
    assert validator.validate(_request(steps=1)).steps == 1
    description = _only_violation(validator, "steps", steps=51)
    assert description == "steps must be from 1 to 50 (got 51)"


@pytest.mark.parametrize("guidance", [math.nan, math.inf, -math.inf, -0.5, 30.5, 1e9])
def test_guidance_out_of_range_refused(validator: RequestValidator, guidance: float) -> None:
    """guidance_scale NaN, infinite, negative or above 30 is refused."""
    description = _only_violation(validator, "guidance_scale", guidance_scale=guidance)
    assert description == "guidance_scale must be from 0 to 30"


def test_num_images_above_max_refused(validator: RequestValidator) -> None:
    """num_images above the server's limit is refused, naming the limit."""
    description = _only_violation(validator, "num_images", num_images=MAX_IMAGES + 1)
    assert description == f"num_images must be from 1 to {MAX_IMAGES} (got {MAX_IMAGES + 1})"


def test_unknown_output_format_refused(validator: RequestValidator) -> None:
    """An output_format enum number the server does not know (99) is refused."""
    with pytest.raises(RequestInvalid) as caught:
        validator.validate(_request(output_format=99))
    assert [v.field for v in caught.value.violations] == ["output_format"]
    assert "PNG, JPEG or WEBP" in caught.value.message


# --- model ---------------------------------------------------------------------------------


def test_unknown_model_not_found(validator: RequestValidator) -> None:
    """A request for a model the server does not have gets NotFound, not InvalidArgument."""
    with pytest.raises(NotFound) as caught:
        validator.validate(_request(model="no-such-model", width=3))
    assert not isinstance(caught.value, InvalidArgument)
    assert "ListModels" in caught.value.message


def test_named_model_selected(model: FakeModel) -> None:
    """A request naming a non-default model is validated against that model's card."""
    other = FakeModel(dataclasses.replace(CARD, id="big", max_width=1024))
    validator = RequestValidator(
        {"fake": model, "big": other}, "fake", max_prompt_bytes=40, max_images=4
    )
    assert validator.validate(_request(model="big", width=1024)).model_id == "big"
    with pytest.raises(RequestInvalid):
        validator.validate(_request(width=1024))


# --- all violations at once ----------------------------------------------------------------


def test_all_violations_reported_together(validator: RequestValidator) -> None:
    """A request breaking many bounds gets one error listing each field with its bound."""
    request = _request(
        prompt="",
        negative_prompt="bad\x07",
        width=100,
        height=1000,
        steps=99,
        guidance_scale=-1.0,
        num_images=9,
        output_format=99,
    )
    with pytest.raises(RequestInvalid) as caught:
        validator.validate(request)
    error = caught.value
    assert [v.field for v in error.violations] == [
        "prompt",
        "negative_prompt",
        "width",
        "height",
        "steps",
        "guidance_scale",
        "num_images",
        "output_format",
    ]
    for expected in (
        "prompt is required",
        "negative_prompt must not contain control or bidi-override characters",
        "width must be a multiple of 8 from 64 to 512 (got 100)",
        "height must be a multiple of 8 from 64 to 256 (got 1000)",
        "steps must be from 1 to 50 (got 99)",
        "guidance_scale must be from 0 to 30",
        "num_images must be from 1 to 4 (got 9)",
        "output_format must be PNG, JPEG or WEBP",
    ):
        assert expected in error.message
    assert error.message == "; ".join(v.description for v in error.violations)


# --- no prompt echo ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    [
        "SECRETPROMPT " * 5,  # over the byte bound
        "SECRETPROMPT\x07",  # control character
        "SECRETPROMPT a b c d e",  # over the token bound
    ],
)
def test_prompt_never_echoed(validator: RequestValidator, prompt: str) -> None:
    """Refusals of a prompt (or negative prompt) never quote its text back."""
    for field in ("prompt", "negative_prompt"):
        fields = {field: prompt} if field == "prompt" else {"negative_prompt": prompt}
        error = _invalid(validator, width=100, **fields)
        assert "SECRETPROMPT" not in error.message
        assert "SECRETPROMPT" not in str(error)
        assert all("SECRETPROMPT" not in v.description for v in error.violations)
