"""``generate`` with any diffusers pipeline folder on disk (Stable Diffusion included).

The folder loads with ``DiffusionPipeline.from_pretrained(path, use_safetensors=True)``,
local files only and no remote or custom code: every component must come from diffusers
or transformers, and every model component must hold safetensors weights.

How a pipeline runs depends on what it is (``mode``):

- a pixel-space ``UNet2DModel`` pipeline (DDPM, DDIM): our own sampling loop of
  ``models.diffusion`` on its UNet, so every scheduler, preview and per-member drop works;
- a pipeline with ``callback_on_step_end`` (text-to-image and most others): called with
  that callback, which reports steps and previews and, once every member is canceled, sets
  ``_interrupt`` so the pipeline stops stepping;
- a pipeline without that callback (DiT takes ``class_labels`` but no callback): steps are
  reported from its scheduler's ``step``, wrapped for this call, and a canceled batch stops
  by an exception from there.

What a request asks for picks one of four small strategies (``WAYS``): text-to-image,
image-to-image (``image``), inpainting (``image`` and ``mask``) and ControlNet
(``control_image``). Each builds its variant of the pipeline once, over the very same
loaded modules (diffusers' ``from_pipe``: no second copy of the base model), and says what
a batch passes to it. On a pixel-space UNet, image-to-image and inpainting run through our
loop's ``init``/``known`` instead. Inpainting returns the unmasked pixels as given (the VAE
round trip would blur them).

Previews show the current prediction of the clean image where the scheduler keeps one
(DPM-Solver++), else the current latents, decoded through the pipeline's VAE where it has
one. Each call gets its own scheduler instance and its own shallow copy of the pipeline,
so per-run state never leaks between jobs.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import inspect
import json
import logging
import threading
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from diffusers import EulerDiscreteScheduler

from models.adapters import activate, check_loras, load_adapters, lora_key
from models.device import compute_dtype
from models.diffusion import new_scheduler, per_image_noise, predicted_x0, request_hook, sample_loop
from models.editing import (
    check_edit,
    edit_key,
    edit_mode,
    image_batch,
    known_at,
    repaint_batch,
    strength_of,
)
from models.images import png_artifact
from models.kinds.generate import GenerateArgs
from models.pipeline_modes import WAYS, way_of
from models.predictor import InvalidRequest, Predictor, Request, StepCallback
from models.registry import register_predictor

if TYPE_CHECKING:
    from models.stepping import Stepper

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class _Canceled(Exception):
    """Every member of the batch was canceled; raised to leave a pipeline between steps."""


def check_pipeline_folder(path: Path) -> None:
    """Refuse a folder that is not a plain diffusers pipeline with safetensors weights."""
    import diffusers

    path = Path(path)
    index = path / "model_index.json"
    if not index.is_file():
        raise ValueError(f"{path} is not a diffusers pipeline folder: it has no model_index.json")
    spec = json.loads(index.read_text())
    name = spec.get("_class_name")
    if not isinstance(name, str) or not hasattr(diffusers, name):
        raise ValueError(
            f"{path}: pipeline class {name!r} is not a diffusers pipeline; custom code is not run"
        )
    for component, value in spec.items():
        if component.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        library = value[0]
        if (
            library not in ("diffusers", "transformers")
            and importlib.util.find_spec(f"diffusers.pipelines.{library}") is None
        ):
            raise ValueError(
                f"{path}: component {component!r} comes from {library!r}; "
                "only diffusers and transformers components load"
            )
        folder = path / component
        if not folder.is_dir():
            continue
        files = [f.name for f in folder.iterdir()]
        if any(f.endswith(PICKLE_SUFFIXES) for f in files) and not any(
            f.endswith(".safetensors") for f in files
        ):
            raise ValueError(
                f"{path}: component {component!r} holds only pickle weights "
                f"({', '.join(sorted(f for f in files if f.endswith(PICKLE_SUFFIXES)))}); "
                "only .safetensors weights load: convert them first"
            )


def _tap(scheduler: Any, generators: list[torch.Generator], after: Any) -> dict[str, Any]:
    """For a pipeline that offers no step callback (DiT): wrap this call's own scheduler's
    ``step`` to keep its latest clean-sample prediction in ``state["x0"]`` and call
    ``after()`` once per step. A pipeline that passes no generator to the step gets the
    per-image ones, so stochastic schedulers stay reproducible."""
    state: dict[str, Any] = {"x0": None}
    step = scheduler.step
    takes_generator = "generator" in inspect.signature(step).parameters

    @functools.wraps(step)  # pipelines read the signature to decide on passing a generator
    def tapped(*args: Any, return_dict: bool = True, **kwargs: Any) -> Any:
        if takes_generator and kwargs.get("generator") is None:
            sample = args[2] if len(args) > 2 else kwargs["sample"]
            repeat = max(1, sample.shape[0] // len(generators))  # guidance may double the batch
            kwargs["generator"] = generators * repeat
        out = step(*args, return_dict=True, **kwargs)
        state["x0"] = predicted_x0(scheduler, out)
        if state["x0"] is None:
            state["x0"] = out.prev_sample
        after()
        return out if return_dict else out.to_tuple()

    scheduler.step = tapped
    return state


def _preview_latents(scheduler: Any, latents: torch.Tensor) -> torch.Tensor:
    """What a step callback can show: the scheduler's clean-sample prediction where it keeps
    one (DPM-Solver++), else the current latents at unit variance."""
    x0 = predicted_x0(scheduler, None)
    if x0 is not None:
        return x0
    if isinstance(scheduler, EulerDiscreteScheduler):  # its latents carry sigma's scale
        return latents / (scheduler.sigmas[scheduler.step_index] ** 2 + 1) ** 0.5
    return latents


@register_predictor("diffusers")
class PipelinePredictor(Predictor):
    kinds = ("generate",)

    def load(self) -> None:
        from diffusers import DiffusionPipeline, UNet2DModel

        if self.entry.path is None:
            raise ValueError(f"{self.entry.name}: a diffusers entry needs a pipeline folder (path)")
        check_pipeline_folder(self.entry.path)
        dtype = compute_dtype(self.entry, self.device)
        try:
            pipe = DiffusionPipeline.from_pretrained(
                self.entry.path,
                use_safetensors=True,
                local_files_only=True,
                trust_remote_code=False,
                dtype=dtype,
            )
        except (OSError, ValueError) as err:
            raise ValueError(
                f"cannot load the diffusers pipeline in {self.entry.path}: {err}"
            ) from err
        self.pipe = pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        params = inspect.signature(self.pipe.__call__).parameters
        pixel_unet = set(self.pipe.components) == {"unet", "scheduler"}  # no VAE, no text encoder
        if pixel_unet and isinstance(self.pipe.unet, UNet2DModel):
            self.mode = "unet2d"
        elif "callback_on_step_end" in params:
            self.mode = "callback"
        else:
            self.mode = "tap"
        self.takes = set(params)
        self.controlnet = self._load_controlnet(dtype)
        self.loras = load_adapters(self.pipe, self.entry)
        self.variants: dict[str, Any] = {}  # way name → its pipeline over the same modules
        self.lock = threading.Lock()  # adapters are set on the shared modules per call

    def _load_controlnet(self, dtype: torch.dtype) -> Any:
        """The ControlNet the catalog names, from safetensors only; None without one."""
        if self.entry.controlnet_path is None:
            return None
        from diffusers import ControlNetModel

        try:
            controlnet = ControlNetModel.from_pretrained(
                self.entry.controlnet_path, use_safetensors=True, local_files_only=True,
                dtype=dtype,
            )
        except (OSError, ValueError) as err:
            raise ValueError(
                f"cannot load the ControlNet in {self.entry.controlnet_path}: {err}"
            ) from err
        return controlnet.to(self.device).eval()

    def modules_for_memory(self) -> list[torch.nn.Module]:
        modules = [m for m in self.pipe.components.values() if isinstance(m, torch.nn.Module)]
        return modules + ([self.controlnet] if self.controlnet is not None else [])

    def stepper(self) -> Stepper | None:
        from models.pipeline_stepping import LatentTextStepper, PixelStepper  # they build on this

        if self.mode == "unet2d":
            return PixelStepper(self)
        return LatentTextStepper(self) if LatentTextStepper.serves(self) else None

    def batch_key(self, request: Request[GenerateArgs]) -> Hashable:
        inp = request.input
        way = way_of(inp)
        return (request.kind, inp.steps, inp.scheduler, inp.guidance_scale, inp.height,
                inp.width, edit_key(inp), way, WAYS[way].share(inp), lora_key(inp))

    def _check(self, request: Request[GenerateArgs]) -> None:
        inp = request.input
        if request.kind != "generate":
            raise InvalidRequest(f"{self.entry.name} serves 'generate', not {request.kind!r}")
        text = "prompt" in self.takes
        if text and not inp.prompt:
            raise InvalidRequest(
                f"{self.entry.name} is a text-to-image pipeline: a prompt is required"
            )
        if not text and (inp.prompt or inp.negative_prompt):
            raise InvalidRequest(f"{self.entry.name} takes no prompt")
        conditional = "class_labels" in self.takes or (
            self.mode == "unet2d" and self.pipe.unet.config.num_class_embeds
        )
        if conditional and inp.class_index is None:
            raise InvalidRequest(f"{self.entry.name} is class-conditional: a class is required")
        if not conditional and inp.class_index is not None:
            raise InvalidRequest(f"{self.entry.name} takes no class")
        if (inp.height or inp.width) and "height" not in self.takes:
            raise InvalidRequest(f"{self.entry.name} does not take height and width")
        check_edit(self.entry.name, inp)
        check_loras(self.entry, inp, self.loras)
        way = way_of(inp)
        if way == "control" and (self.controlnet is None or self.mode != "callback"):
            raise InvalidRequest(f"{self.entry.name} has no ControlNet: drop control_image")
        if way in ("image", "inpaint") and self.mode == "tap":
            raise InvalidRequest(f"{self.entry.name} has no image-to-image or inpainting variant")
        if way in ("image", "inpaint") and (inp.height or inp.width):
            raise InvalidRequest(f"{self.entry.name}: the image sets the size; drop height and width")
        if way == "inpaint" and self.entry.inpaint_path is not None and inp.loras:
            raise InvalidRequest(
                f"{self.entry.name}: LoRA adapters apply to the base model, not to its "
                "inpainting checkpoint"
            )

    @torch.inference_mode()
    def predict(
        self, batch: list[Request[GenerateArgs]], on_step: StepCallback | None = None
    ) -> list[dict[str, Any] | None]:
        for request in batch:
            self._check(request)
        seeds = [s for r in batch for s in r.input.seeds]
        owner = [k for k, r in enumerate(batch) for _ in r.input.seeds]
        per_image = [r.input for r in batch for _ in r.input.seeds]
        hook, live = (None, [True] * len(batch))
        if on_step is not None:
            hook, live = request_hook(len(batch), owner, [r.input for r in batch], on_step)
        if self.mode == "unet2d":
            images, kept = self._run_unet2d(per_image, seeds, hook)
        else:
            images, kept = self._run_pipeline(per_image, seeds, hook, live)
        results: list[dict[str, Any] | None] = [{"images": []} if ok else None for ok in live]
        for image, index in zip(images, kept, strict=True):
            out = results[owner[index]]
            if out is not None:
                name = f"image-{len(out['images'])}.png"
                out["images"].append(png_artifact(name, image, seed=seeds[index]))
        return results

    def _run_unet2d(
        self, per_image: list[GenerateArgs], seeds: list[int], hook: Any
    ) -> tuple[torch.Tensor, list[int]]:
        unet, first = self.pipe.unet, per_image[0]
        size = unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        noise, generators = per_image_noise(seeds, (unet.config.in_channels, h, w))
        labels = None
        if unet.config.num_class_embeds:
            labels = torch.tensor([inp.class_index for inp in per_image], device=self.device)
        config = self.pipe.scheduler.config  # the pipeline's own clipping, for every scheduler
        clip = float(config.get("clip_sample_range", 1.0)) if config.get("clip_sample") else None
        mode = edit_mode(first)
        given = repaint = init = known = None
        if mode != "text":
            given = image_batch([inp.image for inp in per_image if inp.image is not None],
                                unet.config.in_channels, h)
            init = (given * 2 - 1).to(self.device, unet.dtype)
        if mode == "inpaint":
            repaint = repaint_batch([inp.mask for inp in per_image if inp.mask is not None], h)
            known = known_at(repaint, h).to(self.device, unet.dtype)
        samples, kept = sample_loop(
            unet,
            new_scheduler(first.scheduler, self.pipe.scheduler.config),
            first.steps,
            noise.to(self.device, unet.dtype),
            generators,
            class_labels=labels,
            on_step=hook,
            clip_sample=clip,
            init=init,
            strength=strength_of(first),
            known=known,
        )
        images = ((samples.float() + 1) / 2).clamp(0, 1).cpu()
        if repaint is not None and given is not None:  # the kept pixels exactly as given
            images = repaint[kept] * images + (1 - repaint[kept]) * given[kept]
        return images, kept.tolist()

    def _decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Predicted clean latents → images in [-1, 1] (through the VAE where there is one)."""
        vae = getattr(self.pipe, "vae", None)
        if vae is None:
            return x0
        latents = x0 / vae.config.scaling_factor
        if getattr(vae.config, "shift_factor", None):
            latents = latents + vae.config.shift_factor
        return vae.decode(latents.to(vae.dtype)).sample

    def _variant(self, way: str) -> Any:
        """The pipeline of a strategy, built once over the loaded modules."""
        if way == "text":
            return self.pipe
        if way not in self.variants:
            try:
                built = WAYS[way].build(self)
            except ValueError as err:
                raise InvalidRequest(f"{self.entry.name} cannot do {way} generation: {err}") from err
            built.set_progress_bar_config(disable=True)
            self.variants[way] = built
        return self.variants[way]

    def _run_pipeline(
        self, per_image: list[GenerateArgs], seeds: list[int], hook: Any, live: list[bool]
    ) -> tuple[torch.Tensor, list[int]]:
        first, n = per_image[0], len(seeds)
        way = WAYS[way_of(first)]
        with self.lock:
            base = self._variant(way.name)
        pipe = copy.copy(base)  # a per-call view: its own scheduler and interrupt flag
        pipe.scheduler = new_scheduler(first.scheduler, self.pipe.scheduler.config)
        calls = 0

        def report(x0: torch.Tensor) -> None:
            nonlocal calls
            if hook is None or not any(live):
                return
            total = getattr(pipe, "_num_timesteps", None) or len(pipe.scheduler.timesteps)
            calls += 1
            hook(calls, total, _LazyDecode(self, x0[:n]))  # guidance may step a doubled batch
            if not any(live):
                if self.mode == "tap":
                    raise _Canceled
                pipe._interrupt = True

        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        kwargs: dict[str, Any] = {
            "num_inference_steps": first.steps,
            "generator": generators,
            "output_type": "np",
            **self._conditioning(per_image),
            **way.kwargs(per_image),
        }
        if self.mode == "callback":

            def callback(_pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
                report(_preview_latents(pipe.scheduler, tensors["latents"]))
                return {}

            kwargs["callback_on_step_end"] = callback
        else:
            tap = _tap(pipe.scheduler, generators, lambda: report(tap["x0"]))
        try:
            with self.lock:  # the adapters stay as this call set them until it is done
                activate(self.pipe, lora_key(first), self.loras)
                output = pipe(**kwargs)
        except _Canceled:
            return torch.empty(0), []
        if not any(live):
            return torch.empty(0), []
        images = torch.from_numpy(np.asarray(output.images)).permute(0, 3, 1, 2).float()
        return way.finish(images, per_image), list(range(n))

    def _conditioning(self, per_image: list[GenerateArgs]) -> dict[str, Any]:
        """Guidance, prompts and classes, as far as the pipeline takes them."""
        kwargs: dict[str, Any] = {}
        if "guidance_scale" in self.takes:
            kwargs["guidance_scale"] = per_image[0].guidance_scale
        if "prompt" in self.takes:
            kwargs["prompt"] = [inp.prompt for inp in per_image]
            if any(inp.negative_prompt for inp in per_image):
                kwargs["negative_prompt"] = [inp.negative_prompt or "" for inp in per_image]
        if "class_labels" in self.takes:
            kwargs["class_labels"] = [inp.class_index for inp in per_image]
        elif "batch_size" in self.takes:
            kwargs["batch_size"] = len(per_image)
        return kwargs


class _LazyDecode:
    """Predicted clean latents that decode (through the VAE) only for rows that are read,
    so steps without previews cost nothing."""

    def __init__(self, predictor: PipelinePredictor, x0: torch.Tensor) -> None:
        self.predictor, self.x0 = predictor, x0

    def __getitem__(self, rows: Any) -> torch.Tensor:
        return self.predictor._decode(self.x0[rows])
