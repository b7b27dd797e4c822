"""The ways a ``generate`` request runs through a loaded diffusers pipeline, one strategy
each: text-to-image, image-to-image, inpainting and ControlNet.

A strategy builds its variant of the pipeline once (``build``), over the modules the base
pipeline already holds: diffusers' ``AutoPipelineFor*.from_pipe`` makes new pipeline
objects around the very same UNet, VAE and text encoder, so a variant costs no memory and
sees the LoRA adapters set on them. It then says what a batch passes to the variant
(``kwargs``) and what becomes of the images it returns (``finish``). Requests batch together
only when they take the same way with the same shared settings (``share``).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from models.editing import edit_mode, image_batch, repaint_batch, strength_of
from models.kinds.generate import GenerateArgs
from models.predictor import InvalidRequest

if TYPE_CHECKING:
    from models.pipelines import PipelinePredictor


def way_of(inp: GenerateArgs) -> str:
    """The strategy's name for a request: "control", "inpaint", "image" or "text"."""
    return "control" if inp.control_image is not None else edit_mode(inp)


class Way:
    """Text-to-image: the base pipeline as loaded."""

    name: ClassVar[str] = "text"

    def build(self, predictor: PipelinePredictor) -> Any:
        return predictor.pipe

    def share(self, inp: GenerateArgs) -> Hashable:
        """What must agree for requests to share one call (beyond steps and scheduler)."""
        return inp.height, inp.width

    def kwargs(self, per_image: list[GenerateArgs]) -> dict[str, Any]:
        first = per_image[0]
        if first.height and first.width:
            return {"height": first.height, "width": first.width}
        return {}

    def finish(self, images: torch.Tensor, per_image: list[GenerateArgs]) -> torch.Tensor:
        """Images (N, C, H, W) in [0, 1] as the pipeline gave them → as the request gets them."""
        return images


class ImageToImage(Way):
    """``image``: noised to ``strength``, then denoised to the prompt (the image sets the size)."""

    name = "image"

    def build(self, predictor: PipelinePredictor) -> Any:
        from diffusers import AutoPipelineForImage2Image

        return AutoPipelineForImage2Image.from_pipe(predictor.pipe)

    def share(self, inp: GenerateArgs) -> Hashable:
        return strength_of(inp), inp.image.size if inp.image is not None else None

    def kwargs(self, per_image: list[GenerateArgs]) -> dict[str, Any]:
        images = [inp.image.convert("RGB") for inp in per_image if inp.image is not None]
        width, height = images[0].size
        return {"image": images, "strength": strength_of(per_image[0]),
                "width": width, "height": height}


class Inpainting(ImageToImage):
    """``image`` and ``mask``: the white pixels repainted. With an inpainting checkpoint
    the catalog names (``inpaint_path``), that pipeline runs, sharing what it can (text
    encoders, tokenizers, VAE); otherwise the family's inpainting variant of the base."""

    name = "inpaint"
    SHARED = ("text_encoder", "tokenizer", "vae", "text_encoder_2", "tokenizer_2")

    def build(self, predictor: PipelinePredictor) -> Any:
        from diffusers import AutoPipelineForInpainting, DiffusionPipeline

        entry, pipe = predictor.entry, predictor.pipe
        if entry.inpaint_path is None:
            return AutoPipelineForInpainting.from_pipe(pipe)
        from models.pipelines import check_pipeline_folder

        check_pipeline_folder(entry.inpaint_path)
        shared = {k: v for k, v in pipe.components.items() if k in self.SHARED}
        return DiffusionPipeline.from_pretrained(
            entry.inpaint_path, use_safetensors=True, local_files_only=True,
            trust_remote_code=False, **shared,
        ).to(pipe.device)

    def kwargs(self, per_image: list[GenerateArgs]) -> dict[str, Any]:
        masks = [inp.mask.convert("L") for inp in per_image if inp.mask is not None]
        return {**super().kwargs(per_image), "mask_image": masks}

    def finish(self, images: torch.Tensor, per_image: list[GenerateArgs]) -> torch.Tensor:
        """The unmasked pixels as given, not through the VAE round trip."""
        side = images.shape[-1]
        given = image_batch([inp.image for inp in per_image if inp.image is not None],
                            images.shape[1], side)
        repaint = repaint_batch([inp.mask for inp in per_image if inp.mask is not None], side)
        return repaint * images + (1 - repaint) * given


class ControlNet(Way):
    """``control_image``: text-to-image steered by the ControlNet the catalog names
    (``controlnet_path``, loaded once beside the base). The control image sets the size
    unless the request gives height and width."""

    name = "control"

    def build(self, predictor: PipelinePredictor) -> Any:
        from diffusers import AutoPipelineForText2Image

        if predictor.controlnet is None:
            raise InvalidRequest(f"{predictor.entry.name} has no ControlNet")
        return AutoPipelineForText2Image.from_pipe(predictor.pipe,
                                                   controlnet=predictor.controlnet)

    def _size(self, inp: GenerateArgs) -> tuple[int, int]:
        assert inp.control_image is not None
        width, height = inp.control_image.size
        return inp.height or height, inp.width or width

    def share(self, inp: GenerateArgs) -> Hashable:
        return inp.control_scale, self._size(inp)

    def kwargs(self, per_image: list[GenerateArgs]) -> dict[str, Any]:
        """Without height and width the pipeline takes the control image's size, rounded
        down to what its VAE can decode."""
        return {
            **super().kwargs(per_image),
            "image": [inp.control_image.convert("RGB") for inp in per_image
                      if inp.control_image is not None],
            "controlnet_conditioning_scale": per_image[0].control_scale,
        }


WAYS: dict[str, Way] = {way.name: way for way in (Way(), ImageToImage(), Inpainting(),
                                                   ControlNet())}
