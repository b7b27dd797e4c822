"""Step-level batching (``models.stepping``) of diffusers pipelines, built from their parts.

- A pixel-space ``UNet2DModel`` pipeline (DDPM, DDIM): every request, edits included,
  joins one loop on the UNet, as the class-conditional DDPM does.
- A latent text-to-image pipeline of the Stable Diffusion kind (``StableDiffusionPipeline``:
  CLIP text encoder, ``UNet2DConditionModel``, VAE): each member's prompt is encoded as it
  joins, its latents are denoised with the text embeddings as the UNet's per-sample
  conditioning ([prompt; negative prompt] rows where guided), and decoded through the VAE
  as it leaves. Members of one loop share the image size. Every scheduler of the catalog
  works, since each member steps its own instance.

Everything else runs in static batches: image-to-image and inpainting on latent pipelines
(their variants prepare latents from the image in their own way), requests naming LoRA
adapters and any pipeline with adapters loaded (adapters are switched on the shared
modules for a whole call), pipelines with a safety checker, extra UNet conditioning
(SDXL's added embeddings, LCM's guidance embedding), ControlNet, DiT and other
transformer pipelines.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import torch

from models.diffusion import new_scheduler, per_image_noise, preview_artifact, start_timesteps
from models.editing import edit_mode, image_batch, known_at, repaint_batch, strength_of
from models.images import png_artifact
from models.kinds.generate import GenerateArgs
from models.pipeline_modes import way_of
from models.predictor import Artifact, Request
from models.stepping import Member, Schedulers, StepLoop

if TYPE_CHECKING:
    from models.pipelines import PipelinePredictor


def _images(member: Member, images: torch.Tensor) -> dict[str, Any]:
    """A finished member's images (n, C, H, W) in [0, 1] as ``predict`` returns them."""
    return {"images": [png_artifact(f"image-{i}.png", image, seed=seed) for i, (image, seed)
                       in enumerate(zip(images, member.context["seeds"], strict=True))]}


class PixelStepper:
    """A pixel-space ``UNet2DModel`` pipeline: any two requests share a loop."""

    def __init__(self, predictor: PipelinePredictor) -> None:
        self.predictor = predictor
        self.schedulers = Schedulers(
            lambda name: new_scheduler(name, predictor.pipe.scheduler.config))

    def key(self, request: Request) -> Hashable | None:
        return (request.kind,)

    def loop(self) -> StepLoop:
        unet = self.predictor.pipe.unet
        return StepLoop(unet, "class_labels" if unet.config.num_class_embeds else None)

    @torch.inference_mode()
    def begin(self, request: Request) -> Member:
        p, inp = self.predictor, request.input
        p._check(request)
        unet, seeds = p.pipe.unet, list(inp.seeds)
        size = unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        noise, generators = per_image_noise(seeds, (unet.config.in_channels, h, w))
        noise = noise.to(p.device, unet.dtype)
        labels = None
        if unet.config.num_class_embeds:
            labels = torch.full((len(seeds),), int(inp.class_index), device=p.device)
        config = p.pipe.scheduler.config  # the pipeline's own clipping, for every scheduler
        clip = float(config.get("clip_sample_range", 1.0)) if config.get("clip_sample") else None
        mode, n = edit_mode(inp), len(seeds)
        given = repaint = init = known = None
        if mode != "text":
            given = image_batch([inp.image] * n, unet.config.in_channels, h)
            init = (given * 2 - 1).to(p.device, unet.dtype)
        if mode == "inpaint":
            repaint = repaint_batch([inp.mask] * n, h)
            known = known_at(repaint, h).to(p.device, unet.dtype)
        scheduler = self.schedulers(inp.scheduler)
        timesteps, latents = start_timesteps(scheduler, int(inp.steps), noise, init,
                                             strength_of(inp))
        return Member(
            latents=latents, scheduler=scheduler, timesteps=timesteps, generators=generators,
            cond=labels, clip_sample=clip, noise=noise, init=init, known=known,
            preview_every=inp.preview_every,
            context={"seeds": seeds, "repaint": repaint, "given": given},
        )

    @torch.inference_mode()
    def finish(self, member: Member) -> dict[str, Any]:
        ctx = member.context
        images = ((member.latents.float() + 1) / 2).clamp(0, 1).cpu()
        if ctx["repaint"] is not None:  # the kept pixels exactly as given
            images = ctx["repaint"] * images + (1 - ctx["repaint"]) * ctx["given"]
        return _images(member, images)

    @torch.inference_mode()
    def preview(self, member: Member) -> Artifact:
        assert member.x0 is not None, "a preview before the first step"
        return preview_artifact(member.index, member.x0)


class LatentTextStepper:
    """A Stable-Diffusion-style text-to-image pipeline: requests of one image size share a
    loop; image-to-image, inpainting and LoRA requests run statically."""

    def __init__(self, predictor: PipelinePredictor) -> None:
        self.predictor = predictor
        self.schedulers = Schedulers(
            lambda name: new_scheduler(name, predictor.pipe.scheduler.config))

    @staticmethod
    def serves(predictor: PipelinePredictor) -> bool:
        """Whether the pipeline is one this loop reproduces (see the module's docstring)."""
        pipe = predictor.pipe
        return (
            type(pipe).__name__ == "StableDiffusionPipeline"
            and getattr(pipe, "safety_checker", None) is None
            and pipe.unet.config.get("time_cond_proj_dim") is None
            and pipe.unet.config.get("addition_embed_type") is None
            and not predictor.loras
        )

    def _size(self, inp: GenerateArgs) -> tuple[int, int]:
        pipe = self.predictor.pipe
        side = pipe.unet.config.sample_size * pipe.vae_scale_factor
        return inp.height or side, inp.width or side

    def key(self, request: Request) -> Hashable | None:
        inp = request.input
        if way_of(inp) != "text" or inp.loras:
            return None
        return (request.kind, *self._size(inp))

    def loop(self) -> StepLoop:
        return StepLoop(self.predictor.pipe.unet, "encoder_hidden_states")

    @torch.inference_mode()
    def begin(self, request: Request) -> Member:
        from diffusers.utils.torch_utils import randn_tensor

        p, inp = self.predictor, request.input
        p._check(request)
        pipe, seeds = p.pipe, list(inp.seeds)
        n, guidance = len(seeds), float(inp.guidance_scale)
        guided = guidance > 1.0  # as the pipeline decides
        negative = [inp.negative_prompt] * n if inp.negative_prompt else None
        cond, uncond = pipe.encode_prompt([inp.prompt] * n, p.device, 1, guided, negative)
        h, w = self._size(inp)
        scheduler = self.schedulers(inp.scheduler)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        shape = (n, pipe.unet.config.in_channels, h // pipe.vae_scale_factor,
                 w // pipe.vae_scale_factor)
        # drawn as the pipeline draws it: on the CPU, image by image, in the UNet's dtype
        noise = randn_tensor(shape, generator=generators, device=torch.device(p.device),
                             dtype=pipe.unet.dtype)
        timesteps, latents = start_timesteps(scheduler, int(inp.steps), noise)
        dtype = pipe.unet.dtype
        return Member(
            latents=latents, scheduler=scheduler, timesteps=timesteps, generators=generators,
            cond=cond.to(dtype), uncond=uncond.to(dtype) if guided else None,
            guidance_scale=guidance, preview_every=inp.preview_every,
            context={"seeds": seeds},
        )

    @torch.inference_mode()
    def finish(self, member: Member) -> dict[str, Any]:
        images = (self.predictor._decode(member.latents).float() / 2 + 0.5).clamp(0, 1)
        return _images(member, images.cpu())

    @torch.inference_mode()
    def preview(self, member: Member) -> Artifact:
        assert member.x0 is not None, "a preview before the first step"
        return preview_artifact(member.index, self.predictor._decode(member.x0))
