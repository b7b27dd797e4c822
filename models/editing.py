"""Image-to-image and inpainting inputs, shared by the diffusion predictors.

A ``generate`` request may carry an ``image`` (image-to-image: start from it, noised to
``strength``) and a ``mask`` of the same size (inpainting: white pixels are repainted,
black ones kept). Requests batch together only when they run the same way: plain, from an
image, or inpainting, at the same strength (``edit_key``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.images import to_tensor
from models.kinds.generate import GenerateArgs
from models.predictor import InvalidRequest

IMAGE_STRENGTH = 0.75  # image-to-image strength when the request names none
INPAINT_STRENGTH = 1.0  # inpainting strength when the request names none


def edit_mode(inp: GenerateArgs) -> str:
    """"text" (plain generation), "image" (image-to-image) or "inpaint"."""
    if inp.mask is not None:
        return "inpaint"
    return "image" if inp.image is not None else "text"


def strength_of(inp: GenerateArgs) -> float:
    """The request's strength, or the default of its mode."""
    if inp.strength is not None:
        return inp.strength
    return INPAINT_STRENGTH if edit_mode(inp) == "inpaint" else IMAGE_STRENGTH


def edit_key(inp: GenerateArgs) -> tuple[str, float | None]:
    """What must agree for requests to share one sampling loop."""
    mode = edit_mode(inp)
    return mode, None if mode == "text" else strength_of(inp)


def check_edit(name: str, inp: GenerateArgs) -> None:
    """Refuse a mask without an image, a mask of another size, a strength that runs no step."""
    image, mask, steps = inp.image, inp.mask, inp.steps
    if mask is not None and image is None:
        raise InvalidRequest(f"{name}: a mask needs the image it applies to")
    if mask is not None and mask.size != image.size:
        raise InvalidRequest(
            f"{name}: the mask is {mask.size[0]}x{mask.size[1]}, the image "
            f"{image.size[0]}x{image.size[1]}; they must be the same size"
        )
    if image is not None and round(steps * strength_of(inp)) < 1:
        raise InvalidRequest(
            f"{name}: strength {strength_of(inp)} of {steps} steps runs no step; "
            "raise the strength or the steps"
        )


def image_batch(images: list[Image.Image], channels: int, side: int) -> torch.Tensor:
    """(B, C, side, side) in [0, 1]: each image converted and resized bilinearly."""
    return torch.stack([to_tensor(im, channels, side, side) for im in images])


def repaint_batch(masks: list[Image.Image], side: int) -> torch.Tensor:
    """(B, 1, side, side): 1 where the mask is white (repaint), 0 where it is black (keep)."""
    out = []
    for mask in masks:
        gray = mask.convert("L").resize((side, side), Image.Resampling.NEAREST)
        out.append(torch.from_numpy(np.asarray(gray, dtype=np.float32) >= 128).float()[None])
    return torch.stack(out)


def known_at(repaint: torch.Tensor, side: int) -> torch.Tensor:
    """(B, 1, side, side) known-pixel mask at a coarser side: a pixel counts as known only
    when every pixel it covers is kept, so nothing to repaint is ever pinned."""
    if repaint.shape[-1] == side:
        return 1 - repaint
    return 1 - F.adaptive_max_pool2d(repaint, side)
