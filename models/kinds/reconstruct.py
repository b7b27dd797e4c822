"""``reconstruct``: an image through a VAE, with its latent and error."""

from __future__ import annotations

from models.kinds.common import EXAMPLE_IMAGE, Args, ImageIn, Input, Picture

KIND = "reconstruct"
EXAMPLE = {"model": "vae-digits", "input": {"image": EXAMPLE_IMAGE}}


class ReconstructInput(Input):
    """``reconstruct``: an image through a VAE, with its latent and error."""

    image: ImageIn


class ReconstructArgs(Args):
    image: Picture
