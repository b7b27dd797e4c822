"""``reconstruct``: an image through a VAE, with its latent and error."""

from __future__ import annotations

from models.kinds.common import EXAMPLE_IMAGE, Args, ImageIn, Input, Kind, Picture


class ReconstructInput(Input):
    """``reconstruct``: an image through a VAE, with its latent and error."""

    image: ImageIn


class ReconstructArgs(Args):
    image: Picture


KIND = Kind("reconstruct", ReconstructInput, ReconstructArgs,
            example={"model": "vae-digits", "input": {"image": EXAMPLE_IMAGE}})
