"""CostModel: a request's GPU price is pixels x steps x images x the model's factor.

One unit is one denoising step over 512 x 512 pixels of a factor-1 model;
a model the table does not name costs factor 1.
"""

from __future__ import annotations

import pytest
from support import generation_request as request

from pixelgate.server.core.generation import GenerationRequest
from pixelgate.server.limits.gpu_quota import UNIT_PIXELS, CostModel


def test_one_unit_is_one_512_square_step() -> None:
    """512 x 512, one step, one image of an unlisted model costs exactly one unit."""
    assert UNIT_PIXELS == 512 * 512
    assert CostModel().cost(request()) == 1.0


@pytest.mark.parametrize(
    ("asked", "units"),
    [
        (request(width=1024, height=1024), 4.0),  # four times the pixels
        (request(width=256, height=512), 0.5),
        (request(steps=30), 30.0),
        (request(images=4), 4.0),
        (request(width=1024, height=512, steps=20, images=2), 80.0),
    ],
)
def test_cost_grows_with_pixels_steps_and_images(asked: GenerationRequest, units: float) -> None:
    """The price is proportional to each of width x height, steps and images."""
    assert CostModel().cost(asked) == pytest.approx(units)


def test_model_factor_scales_the_price() -> None:
    """A model's cost factor multiplies its price; other models keep factor 1."""
    costs = CostModel({"xl": 2.5, "tiny": 0.1})
    assert costs.cost(request(model="xl", steps=4)) == pytest.approx(10.0)
    assert costs.cost(request(model="tiny", steps=4)) == pytest.approx(0.4)
    assert costs.cost(request(model="sd", steps=4)) == pytest.approx(4.0)


def test_factors_are_copied() -> None:
    """Changing the table after building the model changes no price."""
    factors = {"xl": 2.0}
    costs = CostModel(factors)
    factors["xl"] = 100.0
    assert costs.cost(request(model="xl")) == 2.0
