"""Class-conditional denoising diffusion (Ho et al., 2020) on diffusers' ``UNet2DModel``.

The UNet predicts the noise epsilon added to an image at timestep t, given a class label;
its class embedding has one entry more than there are classes, the null class, which
training substitutes for the label about one time in ten. At sampling time classifier-free
guidance (Ho & Salimans, 2022) runs one doubled batch [conditional; null] and mixes
eps = eps_null + g * (eps_cond - eps_null). The loop below is as short as diffusers'
``pipeline_ddpm.py``: model output, guidance, scheduler step, callback.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UNet2DModel,
)

from models.checkpoint import load_model
from models.device import compute_dtype
from models.editing import (
    check_edit,
    edit_key,
    edit_mode,
    image_batch,
    known_at,
    repaint_batch,
    strength_of,
)
from models.images import grid, png_artifact
from models.kinds.generate import GenerateArgs
from models.predictor import Artifact, InvalidRequest, Predictor, Request, StepCallback
from models.registry import register_model, register_predictor

if TYPE_CHECKING:
    from models.stepping import Stepper

BLOCK_TYPES = {"DownBlock2D", "AttnDownBlock2D", "UpBlock2D", "AttnUpBlock2D"}


@dataclass(frozen=True)
class DiffusionConfig:
    sample_size: int = 32  # square image side the UNet is trained at
    channels: int = 1  # image channels
    num_classes: int = 10  # conditioning classes; index num_classes is the null class
    block_out_channels: tuple[int, ...] = (16, 32, 64)  # UNet width per resolution
    layers_per_block: int = 1  # resnet blocks per down block (up blocks get one more)
    down_block_types: tuple[str, ...] = (
        "DownBlock2D",
        "DownBlock2D",
        "AttnDownBlock2D",
    )  # per level
    up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")  # per level
    norm_num_groups: int = 8  # group norm groups; must divide every width
    attention_head_dim: int = 8  # channels per attention head in the attention blocks
    output_size: int | None = None  # side of the served images, bilinearly upsampled; None: sample_size


@dataclass(frozen=True)
class NoiseSchedule:
    num_train_timesteps: int = 1000  # steps of the forward (noising) process
    beta_schedule: str = "linear"  # "linear", "scaled_linear" or "squaredcos_cap_v2"
    beta_start: float = 1e-4  # first beta of a linear schedule
    beta_end: float = 0.02  # last beta of a linear schedule
    prediction_type: str = "epsilon"  # what the UNet predicts: "epsilon" or "v_prediction"
    clip_sample: float | None = 1.0  # sampling clips the predicted clean image to ± this


def _from_json(cls: type, raw: dict[str, Any]) -> Any:
    """A config dataclass from sidecar JSON (lists become tuples; unknown keys refused)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def build_unet(config: DiffusionConfig) -> UNet2DModel:
    """The UNet2DModel a config describes, with num_classes + 1 class embeddings."""
    levels = len(config.block_out_channels)
    if not (levels == len(config.down_block_types) == len(config.up_block_types)):
        raise ValueError(
            f"block_out_channels, down and up block types differ in length: {levels}, "
            f"{len(config.down_block_types)}, {len(config.up_block_types)}"
        )
    unknown = sorted({*config.down_block_types, *config.up_block_types} - BLOCK_TYPES)
    if unknown:
        raise ValueError(f"unknown block types {unknown}; known: {sorted(BLOCK_TYPES)}")
    bad = [w for w in config.block_out_channels if w % config.norm_num_groups]
    if bad:
        raise ValueError(
            f"widths {bad} are not divisible by norm_num_groups={config.norm_num_groups}"
        )
    if config.sample_size % 2 ** (levels - 1):
        raise ValueError(f"sample_size {config.sample_size} is not divisible by 2**{levels - 1}")
    if config.num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {config.num_classes}")
    return UNet2DModel(
        sample_size=config.sample_size,
        in_channels=config.channels,
        out_channels=config.channels,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        down_block_types=config.down_block_types,
        up_block_types=config.up_block_types,
        norm_num_groups=config.norm_num_groups,
        attention_head_dim=config.attention_head_dim,
        num_class_embeds=config.num_classes + 1,
    )


@register_model("ddpm")
def ddpm(**config: Any) -> UNet2DModel:
    return build_unet(_from_json(DiffusionConfig, config))


SCHEDULERS = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpmpp": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
}


def new_scheduler(name: str, config: Mapping[str, Any]) -> Any:
    """A fresh scheduler of the chosen kind (they keep per-run state, so one per run) on the
    noise schedule ``config`` holds: a model's training schedule or a pipeline's own
    scheduler config. What ``config`` says that the kind does not know is left aside."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; known: {sorted(SCHEDULERS)}")
    extra = {"algorithm_type": "dpmsolver++"} if name == "dpmpp" else {}
    return SCHEDULERS[name].from_config(dict(config), **extra)


def make_scheduler(name: str, schedule: NoiseSchedule) -> Any:
    """A fresh scheduler on the training noise schedule."""
    return new_scheduler(name, {
        "num_train_timesteps": schedule.num_train_timesteps,
        "beta_schedule": schedule.beta_schedule,
        "beta_start": schedule.beta_start,
        "beta_end": schedule.beta_end,
        "prediction_type": schedule.prediction_type,
    })


def predicted_x0(scheduler: Any, output: Any) -> torch.Tensor | None:
    """The step's prediction of the clean sample, where the scheduler exposes it."""
    x0 = getattr(output, "pred_original_sample", None)
    if x0 is None and getattr(scheduler.config, "algorithm_type", "") in (
        "dpmsolver++",
        "sde-dpmsolver++",
    ):
        x0 = scheduler.model_outputs[-1]  # DPM-Solver++ keeps its x0 predictions
    return x0


def keep_in_scheduler_state(scheduler: Any, keep: torch.Tensor, batch: int) -> None:
    """Slice per-sample history a multistep scheduler keeps (e.g. DPM-Solver's model outputs)."""

    def cut(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim == 4 and value.shape[0] == batch:
            return value[keep]
        return value

    for name, value in list(vars(scheduler).items()):
        if isinstance(value, list):
            setattr(scheduler, name, [cut(v) for v in value])
        else:
            setattr(scheduler, name, cut(value))


def clip_through_x0(
    scheduler: Any,
    x_t: torch.Tensor,
    out: torch.Tensor,
    t: Any,
    limit: float,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """The model output whose implied clean image is clipped to [-limit, limit].

    x_t is the variance-preserving model input; ``out`` is the noise (epsilon) or the
    velocity v = sqrt(abar) eps - sqrt(1 - abar) x0, as ``prediction_type`` says, and the
    answer is of the same kind. DDPM's reference sampler clips its x0 prediction at every
    step; doing it on the model output gives every scheduler (DPM-Solver, Euler) the same
    guard against the large x0 errors of the noisiest steps.
    """
    if isinstance(scheduler, EulerDiscreteScheduler):  # its timesteps may fall between integers
        sigma = scheduler.sigmas[scheduler.step_index].to(x_t.device, torch.float32)
        abar = 1 / (1 + sigma**2)
    else:
        abar = scheduler.alphas_cumprod[int(t)].to(x_t.device, torch.float32)
    a, s = abar.sqrt(), (1 - abar).sqrt()
    x, o = x_t.float(), out.float()
    if prediction_type == "v_prediction":
        x0 = (a * x - s * o).clamp(-limit, limit)
        eps = (x - a * x0) / s
        return (a * eps - s * x0).to(out.dtype)
    if prediction_type != "epsilon":
        raise ValueError(f"unknown prediction type {prediction_type!r}; known: epsilon, v_prediction")
    x0 = ((x - s * o) / a).clamp(-limit, limit)
    return ((x - a * x0) / s).to(out.dtype)


def start_timesteps(
    scheduler: Any,
    steps: int,
    noise: torch.Tensor,
    init: torch.Tensor | None = None,
    strength: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Set ``steps`` timesteps on the scheduler; return those to run and the starting sample:
    pure noise, or ``init`` noised ``strength`` of the way (image-to-image skips the first
    steps)."""
    scheduler.set_timesteps(steps, device=noise.device)
    timesteps = scheduler.timesteps
    latents = noise * scheduler.init_noise_sigma
    if init is not None and strength < 1.0:
        skip = (steps - min(round(steps * strength), steps)) * scheduler.order
        timesteps = timesteps[skip:]
        if len(timesteps) == 0:
            raise ValueError(f"strength {strength} of {steps} steps leaves no step to run")
        if hasattr(scheduler, "set_begin_index"):  # where add_noise and step count steps
            scheduler.set_begin_index(skip)
        latents = scheduler.add_noise(init, noise, timesteps[:1].repeat(noise.shape[0]))
    return timesteps, latents


# step, total, predicted clean images (B, C, H, W) → per-image mask of the ones to go on with
StepHook = Callable[[int, int, torch.Tensor], torch.Tensor | None]


def sample_loop(
    unet: UNet2DModel,
    scheduler: Any,
    steps: int,
    noise: torch.Tensor,
    generators: list[torch.Generator],
    class_labels: torch.Tensor | None = None,
    null_class: int | None = None,
    guidance_scale: float = 1.0,
    on_step: StepHook | None = None,
    clip_sample: float | None = None,
    init: torch.Tensor | None = None,
    strength: float = 1.0,
    known: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoise ``noise`` (B, C, H, W) in ``steps`` scheduler steps.

    ``clip_sample`` (the data range, 1.0 for images in [-1, 1]) clips the predicted clean
    image at every step, whatever the scheduler; None leaves the model output alone.

    ``init`` (B, C, H, W) in the data range starts from an image instead: image-to-image
    (SDEdit, Meng et al., 2022) noises it to ``strength`` of the way (1.0: pure noise) and
    runs the remaining ``round(steps * strength)`` steps. ``known`` (B, 1, H, W), 1 where
    a pixel is known, makes it inpainting: after every step the known pixels are replaced
    by ``init`` noised to that step's level, with the same noise, so the model only ever
    fills in the rest around pixels consistent with the image.

    Returns (samples, kept): the final samples of the images still wanted and the indices,
    into the original batch, of those images. ``on_step`` may return a boolean mask over the
    live images; the ones marked False leave the batch before the next step.
    """
    if len(generators) != noise.shape[0]:
        raise ValueError(f"need one generator per image: {len(generators)} for {noise.shape[0]}")
    if known is not None and init is None:
        raise ValueError("inpainting needs the image (init) whose known pixels it keeps")
    guided = class_labels is not None and null_class is not None and guidance_scale != 1.0
    kept = torch.arange(noise.shape[0])
    timesteps, latents = start_timesteps(scheduler, steps, noise, init, strength)
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        # 1. model input, doubled [conditional; null] for guidance  (2B or B, C, H, W)
        x_t = scheduler.scale_model_input(latents, t)
        x_in, labels = x_t, class_labels
        if guided:
            x_in = torch.cat([x_t, x_t])
            labels = torch.cat([class_labels, torch.full_like(class_labels, null_class)])  # type: ignore[arg-type]
        eps = unet(x_in, t, class_labels=labels).sample
        # 2. classifier-free guidance  (B, C, H, W)
        if guided:
            eps_cond, eps_null = eps.chunk(2)
            eps = eps_null + guidance_scale * (eps_cond - eps_null)
        if clip_sample is not None:
            eps = clip_through_x0(
                scheduler, x_t, eps, t, clip_sample, scheduler.config.prediction_type
            )
        # 3. scheduler step, each image drawing from its own generator
        output = scheduler.step(eps, t, latents, generator=generators)
        latents = output.prev_sample
        # 4. inpainting: the known pixels, noised to the next step's level
        if known is not None and init is not None:
            back = init
            if i + 1 < total:
                back = scheduler.add_noise(init, noise, timesteps[i + 1 : i + 2].repeat(len(init)))
            latents = known * back.to(latents.dtype) + (1 - known) * latents
        # 5. callback; drop the images no longer wanted
        if on_step is None:
            continue
        x0 = predicted_x0(scheduler, output)
        keep = on_step(i + 1, total, x0 if x0 is not None else latents)
        if keep is not None and not bool(keep.all()):
            keep = keep.to(latents.device)
            keep_in_scheduler_state(scheduler, keep, latents.shape[0])
            latents, kept, noise = latents[keep], kept[keep.cpu()], noise[keep]
            init = init[keep] if init is not None else None
            known = known[keep] if known is not None else None
            generators = [g for g, k in zip(generators, keep.tolist(), strict=True) if k]
            if class_labels is not None:
                class_labels = class_labels[keep]
            if latents.shape[0] == 0:
                break
    return latents, kept


def to_output_size(samples: torch.Tensor, config: DiffusionConfig) -> torch.Tensor:
    """Samples (N, C, h, w) in [-1, 1] as images in [0, 1] at the served side, upsampled
    bilinearly as the training data was."""
    images = ((samples.float() + 1) / 2).clamp(0, 1)
    side = config.output_size or config.sample_size
    if images.shape[-1] != side:
        images = F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)
    return images.clamp(0, 1)


def preview_artifact(step: int, x0: torch.Tensor, max_side: int = 256) -> Artifact:
    """A small grid PNG of predicted clean images (N, C, H, W) in [-1, 1]."""
    images = ((x0.float() + 1) / 2).clamp(0, 1).cpu()
    nrow = min(len(images), 4)
    picture = grid(images, nrow=nrow, padding=1)
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side))
    return png_artifact(f"preview-{step}.png", picture, step=step)


def per_image_noise(
    seeds: list[int], shape: tuple[int, ...]
) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Initial noise (N, *shape), each image from its own CPU generator, and those generators
    (stochastic schedulers draw from them too, so a seed fixes the whole trajectory)."""
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
    return noise, generators


def request_hook(
    batch_size: int, owner: list[int], inputs: list[GenerateArgs], on_step: StepCallback
) -> tuple[StepHook, list[bool]]:
    """Adapt a per-request ``on_step`` to the per-image hook of ``sample_loop``.

    ``owner[i]`` is the request of image i. Returns the hook and the live flag per request,
    which the hook keeps up to date.
    """
    live = [True] * batch_size
    owners = list(owner)  # request of each live image

    def hook(step: int, total: int, x0: torch.Tensor) -> torch.Tensor:
        members = [r for r in range(batch_size) if live[r]]
        previews: list[Artifact | None] = []
        for r in members:
            every = inputs[r].preview_every
            mine = [i for i, o in enumerate(owners) if o == r]
            previews.append(
                preview_artifact(step, x0[mine]) if every > 0 and step % every == 0 else None
            )
        wanted = list(on_step(step, total, previews))
        if len(wanted) != len(members):
            raise ValueError(f"on_step answered for {len(wanted)} members, {len(members)} are live")
        for r, w in zip(members, wanted, strict=True):
            live[r] = bool(w)
        keep = torch.tensor([live[o] for o in owners], dtype=torch.bool)
        owners[:] = [o for o in owners if live[o]]
        return keep

    return hook, live


@register_predictor("ddpm")
class DiffusionPredictor(Predictor):
    kinds = ("generate",)

    def load(self) -> None:
        assert self.entry.weights is not None, f"{self.entry.name} has no weights"
        self.unet, sidecar = load_model(self.entry.weights, self.entry.sha256, self.device)
        self.config: DiffusionConfig = _from_json(DiffusionConfig, sidecar["config"])
        self.schedule: NoiseSchedule = _from_json(NoiseSchedule, sidecar.get("noise_schedule", {}))
        self.labels = self.entry.labels or [str(i) for i in range(self.config.num_classes)]
        self.dtype = compute_dtype(self.entry, self.device)
        self.unet.to(self.dtype)

    def modules_for_memory(self) -> list[torch.nn.Module]:
        return [self.unet]

    def stepper(self) -> Stepper:
        from models.stepping import DiffusionStepper  # it builds on this module

        return DiffusionStepper(self)

    def batch_key(self, request: Request[GenerateArgs]) -> Hashable:
        inp = request.input
        return (request.kind, inp.steps, inp.scheduler, inp.guidance_scale, edit_key(inp))

    def _check(self, request: Request[GenerateArgs]) -> None:
        inp, side = request.input, self.config.output_size or self.config.sample_size
        if request.kind != "generate":
            raise InvalidRequest(f"{self.entry.name} serves 'generate', not {request.kind!r}")
        if inp.prompt or inp.negative_prompt:
            raise InvalidRequest(f"{self.entry.name} is class-conditional and takes no prompt")
        for key, value in (("height", inp.height), ("width", inp.width)):
            if value not in (None, side):
                raise InvalidRequest(
                    f"{self.entry.name} generates {side}x{side} images, not {key}={value}"
                )
        cls = inp.class_index
        if cls is not None and not 0 <= cls < self.config.num_classes:
            raise InvalidRequest(f"class index {cls} is outside 0..{self.config.num_classes - 1}")
        if inp.loras:
            raise InvalidRequest(f"{self.entry.name} takes no LoRA adapters")
        if inp.control_image is not None:
            raise InvalidRequest(f"{self.entry.name} takes no control_image")
        check_edit(self.entry.name, inp)

    @torch.inference_mode()
    def predict(
        self, batch: list[Request[GenerateArgs]], on_step: StepCallback | None = None
    ) -> list[dict[str, Any] | None]:
        for request in batch:
            self._check(request)
        first = batch[0].input
        # 1. every image of every request in one batch: its noise, generator, class, owner
        seeds = [s for r in batch for s in r.input.seeds]
        owner = [k for k, r in enumerate(batch) for _ in r.input.seeds]
        null = self.config.num_classes  # a request without a class samples unconditionally
        classes = [
            null if r.input.class_index is None else r.input.class_index
            for r in batch
            for _ in r.input.seeds
        ]
        c, side = self.config.channels, self.config.sample_size
        noise, generators = per_image_noise(seeds, (c, side, side))
        init, known, repaint, given = self._edit_inputs(batch)
        # 2. one sampling loop on a scheduler instance of this call's own
        hook, live = (None, [True] * len(batch))
        if on_step is not None:
            hook, live = request_hook(len(batch), owner, [r.input for r in batch], on_step)
        samples, kept = sample_loop(
            self.unet,
            make_scheduler(first.scheduler, self.schedule),
            first.steps,
            noise.to(self.device, self.dtype),
            generators,
            class_labels=torch.tensor(classes, device=self.device),
            null_class=null,
            guidance_scale=first.guidance_scale,
            on_step=hook,
            clip_sample=self.schedule.clip_sample,
            init=None if init is None else init.to(self.device, self.dtype),
            strength=strength_of(first),
            known=None if known is None else known.to(self.device, self.dtype),
        )
        # 3. images back to [0, 1], split per request (None for the dropped ones)
        images = to_output_size(samples.cpu(), self.config)
        if repaint is not None and given is not None:  # the kept pixels exactly as given
            keep = repaint[kept]
            images = keep * images + (1 - keep) * given[kept]
        results: list[dict[str, Any] | None] = [{"images": []} if ok else None for ok in live]
        for image, index in zip(images, kept.tolist(), strict=True):
            k = owner[index]
            out = results[k]
            if out is None:
                continue
            meta: dict[str, Any] = {"seed": seeds[index]}
            if classes[index] != null:
                meta["class_label"] = self.labels[classes[index]]
            out["images"].append(png_artifact(f"image-{len(out['images'])}.png", image, **meta))
        return results

    def _edit_inputs(
        self, batch: list[Request[GenerateArgs]]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Per image: (init at the model's side in [-1, 1], its known-pixel mask, the repaint
        mask and the given image at the served side); None where the batch has no image."""
        mode = edit_mode(batch[0].input)
        if mode == "text":
            return None, None, None, None
        c, side = self.config.channels, self.config.sample_size
        out_side = self.config.output_size or side
        per_image = [r.input for r in batch for _ in r.input.seeds]
        given = image_batch([inp.image for inp in per_image if inp.image is not None], c, out_side)
        init = F.interpolate(given, size=(side, side), mode="area") * 2 - 1
        if mode != "inpaint":
            return init, None, None, None
        repaint = repaint_batch([inp.mask for inp in per_image if inp.mask is not None], out_side)
        return init, known_at(repaint, side), repaint, given
