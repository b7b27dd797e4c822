"""``classify``: the top labels of one image."""

from __future__ import annotations

from pydantic import Field

from models.kinds.common import EXAMPLE_IMAGE, MAX_TOP_K, Args, ImageIn, Input, Kind, Picture


class ClassifyInput(Input):
    """``classify``: the top labels of one image."""

    image: ImageIn
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description="how many labels to return, best "
                       "first (at most the model's limits.max_top_k)", examples=[3])


class ClassifyArgs(Args):
    image: Picture
    top_k: int = 5


KIND = Kind("classify", ClassifyInput, ClassifyArgs,
            example={"model": "lenet5-digits", "input": {"image": EXAMPLE_IMAGE, "top_k": 3}})
