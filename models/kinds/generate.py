"""``generate``: images from a diffusion model (class-conditional or a text pipeline),
from noise, from an image (image-to-image), around a mask (inpainting), with LoRA adapters
or guided by a ControlNet's control image."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from models.kinds.common import (
    EXAMPLE_IMAGE,
    MAX_N,
    MAX_PROMPT_CHARS,
    MAX_SIDE,
    MAX_STEPS,
    Args,
    ClassLabel,
    ImageIn,
    Input,
    Kind,
    Picture,
    Seeds,
    seed_field,
)

MAX_LORAS = 4  # adapters one request may combine
Scheduler = Literal["ddpm", "ddim", "dpmpp", "euler"]


class LoraChoice(Input):
    """One LoRA adapter of the model, at a scale."""

    name: str = Field(min_length=1, max_length=200, description="an adapter the catalog "
                      "declares for the model", examples=["ink"])
    scale: float = Field(1.0, ge=-4, le=4, description="0: the base model; 1: the adapter "
                         "as trained", examples=[0.8])


class GenerateInput(Input):
    """``generate``: images from a diffusion model (class-conditional or a text pipeline)."""

    n: int = Field(1, ge=1, le=MAX_N, description="images to generate (at most the model's "
                   "limits.max_n)", examples=[4])
    seed: int | None = seed_field()
    class_label: ClassLabel = None
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description="text "
                               "pipelines: what to draw", examples=["a red circle"])
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS,
                                        description="text pipelines: what to avoid",
                                        examples=["blurry"])
    steps: int = Field(20, ge=1, le=MAX_STEPS, description="denoising steps (at most the "
                       "model's limits.max_steps)", examples=[20])
    scheduler: Scheduler = Field(
        "dpmpp", description="the sampler: DDPM, DDIM, DPM-Solver++ or Euler",
        examples=["dpmpp"])
    guidance_scale: float | None = Field(None, ge=0, le=100, description="classifier-free "
                                         "guidance; the model's default when absent",
                                         examples=[2.0])
    height: int | None = Field(None, ge=8, le=MAX_SIDE, description="pipelines that take a "
                               "size: output height in pixels (at most limits.max_side)",
                               examples=[512])
    width: int | None = Field(None, ge=8, le=MAX_SIDE, description="pipelines that take a "
                              "size: output width in pixels (at most limits.max_side)",
                              examples=[512])
    preview_every: int = Field(0, ge=0, le=MAX_STEPS, description="emit a preview event "
                               "every N steps (0: none)", examples=[5])
    image: ImageIn | None = Field(None, description="image-to-image: the image to start from "
                                  "(noised to strength, then denoised to the request)",
                                  examples=[EXAMPLE_IMAGE])
    mask: ImageIn | None = Field(None, description="inpainting, with image: the same size as "
                                 "image; white pixels are repainted, black ones kept",
                                 examples=[EXAMPLE_IMAGE])
    strength: float | None = Field(None, gt=0, le=1, description="with image: how far it is "
                                   "noised (1: all the way); default 0.75 for image-to-image, "
                                   "1.0 for inpainting", examples=[0.6])
    loras: list[LoraChoice] | None = Field(None, max_length=MAX_LORAS, description="diffusers "
                                           "models: LoRA adapters the catalog declares, each "
                                           "with a scale",
                                           examples=[[{"name": "ink", "scale": 0.8}]])
    control_image: ImageIn | None = Field(
        None, description="models with a ControlNet (GET /v1/models: controlnet): the "
        "conditioning image (edges, depth, pose... as the ControlNet was trained on); it sets "
        "the output size unless height and width are given", examples=[EXAMPLE_IMAGE])
    control_scale: float | None = Field(
        None, ge=0, le=2, description="with control_image: how strongly it steers (0: not "
        "at all; default 1.0)", examples=[0.8])


class GenerateArgs(Args):
    seeds: Seeds
    class_index: int | None = None  # into the model's labels
    prompt: str | None = None
    negative_prompt: str | None = None
    steps: int = Field(20, ge=1)
    scheduler: Scheduler = "dpmpp"
    guidance_scale: float = Field(3.0, ge=0)  # the model's default filled in
    height: int | None = None
    width: int | None = None
    preview_every: int = Field(0, ge=0)
    image: Picture | None = None
    mask: Picture | None = None
    strength: float | None = Field(None, gt=0, le=1)
    loras: list[LoraChoice] = Field(default_factory=list)
    control_image: Picture | None = None
    control_scale: float = Field(1.0, ge=0)

    @property
    def n(self) -> int:
        return len(self.seeds)


KIND = Kind("generate", GenerateInput, GenerateArgs, example={"model": "ddpm-digits", "input": {
    "class_label": "7", "n": 2, "seed": 42, "steps": 10, "scheduler": "dpmpp"}})
