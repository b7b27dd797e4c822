"""``sample``: images from a GAN or a VAE's prior, or a VAE path between two images."""

from __future__ import annotations

from pydantic import Field

from models.kinds.common import (
    EXAMPLE_IMAGE,
    MAX_N,
    Args,
    ClassLabel,
    ImageIn,
    Input,
    Kind,
    Picture,
    Seeds,
    seed_field,
)

MAX_INTERPOLATION = 64  # points on a VAE interpolation path


class SampleInput(Input):
    """``sample``: images from a GAN or a VAE's prior, or a VAE path between two images."""

    n: int = Field(1, ge=1, le=MAX_N, description="images to draw (at most the model's "
                   "limits.max_n)", examples=[4])
    seed: int | None = seed_field()
    class_label: ClassLabel = None
    truncation: float = Field(1.0, gt=0, le=10, description="scales the latent; below 1 "
                              "trades variety for typical images", examples=[0.8])
    interpolate_between: list[ImageIn] | None = Field(
        None, min_length=2, max_length=2, description="VAE only: two images; the output is "
        "the decoded path between their latents", examples=[[EXAMPLE_IMAGE, EXAMPLE_IMAGE]])
    steps: int | None = Field(None, ge=2, le=MAX_INTERPOLATION, description="points on the "
                              "interpolation path (with interpolate_between)", examples=[8])


class SampleArgs(Args):
    seeds: Seeds
    class_index: int | None = None  # into the model's labels
    truncation: float = Field(1.0, gt=0)
    interpolate_between: list[Picture] | None = Field(None, min_length=2, max_length=2)
    steps: int | None = Field(None, ge=2)

    @property
    def n(self) -> int:
        return len(self.seeds)


KIND = Kind("sample", SampleInput, SampleArgs,
            example={"model": "dcgan-digits", "input": {"n": 4, "seed": 42, "class_label": "3"}})
