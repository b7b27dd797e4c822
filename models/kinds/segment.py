"""``segment``: a class index per pixel, as a mask and an overlay."""

from __future__ import annotations

from models.kinds.common import EXAMPLE_IMAGE, Args, ImageIn, Input, Kind, Picture


class SegmentInput(Input):
    """``segment``: a class index per pixel, as a mask and an overlay."""

    image: ImageIn


class SegmentArgs(Args):
    image: Picture


KIND = Kind("segment", SegmentInput, SegmentArgs,
            example={"model": "unet-shapes", "input": {"image": EXAMPLE_IMAGE}})
