"""Step-level (continuous) batching of diffusion sampling.

Static micro-batching runs one whole sampling loop for the requests that arrived together:
a request that arrives one step later waits for every step of that batch, then for its own
loop. Here the batch is formed again at every step. Each member (one request's images)
carries its own scheduler instance, its own timesteps and its own place among them; one
UNet forward serves every member, each row at its member's timestep (diffusers' UNets take
a timestep per sample), and then each member's scheduler steps its own rows. A member
joins at any step boundary and leaves as soon as it has run its last step or is no longer
wanted, so a request that arrives while others sample starts at the next step.

What a member's images become depends only on its own seeds: the noise and every
stochastic step draw from the member's own generators, and the scheduler's history
(DPM-Solver's past outputs) is the member's own. Sharing a forward changes the result only
to the tolerance of batched kernels.

A predictor offers this through ``stepper()`` (see ``Stepper``); the worker's admission
lives in ``workers/stepper.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from models.diffusion import (
    DiffusionPredictor,
    clip_through_x0,
    make_scheduler,
    per_image_noise,
    predicted_x0,
    preview_artifact,
    start_timesteps,
    to_output_size,
)
from models.editing import strength_of
from models.images import png_artifact
from models.predictor import Artifact, Request


@dataclass(eq=False)
class Member:
    """One request's images inside a step loop."""

    latents: torch.Tensor  # (n, C, H, W) the images being denoised
    scheduler: Any  # this member's own scheduler instance, its timesteps set
    timesteps: torch.Tensor  # the timesteps it runs (image-to-image starts part-way)
    generators: list[torch.Generator]  # one per image, for stochastic steps
    cond: torch.Tensor | None = None  # (n, ...) conditioning: class labels or text embeddings
    uncond: torch.Tensor | None = None  # (n, ...) the null conditioning; None: no guidance
    guidance_scale: float = 1.0  # eps = eps_null + g (eps_cond - eps_null) where guided
    clip_sample: float | None = None  # clip the implied clean image to ± this at every step
    noise: torch.Tensor | None = None  # (n, C, H, W) the starting noise, for inpainting
    init: torch.Tensor | None = None  # (n, C, H, W) the image inpainting keeps pixels of
    known: torch.Tensor | None = None  # (n, 1, H, W) 1 where a pixel is kept
    preview_every: int = 0  # a preview every this many steps (0: none)
    context: dict[str, Any] = field(default_factory=dict)  # what the stepper needs to finish
    index: int = 0  # steps run so far
    x0: torch.Tensor | None = None  # the latest prediction of the clean images

    @property
    def total(self) -> int:
        return len(self.timesteps)

    @property
    def done(self) -> bool:
        return self.index >= self.total

    @property
    def wants_preview(self) -> bool:
        """Whether the step just run is one the request asked a preview of."""
        return self.preview_every > 0 and self.index % self.preview_every == 0


class StepLoop:
    """The members sampling together on one UNet; ``cond_arg`` names the UNet's
    conditioning argument (``class_labels``, ``encoder_hidden_states``, or None)."""

    def __init__(self, unet: torch.nn.Module, cond_arg: str | None) -> None:
        self.unet = unet
        self.cond_arg = cond_arg
        self.members: list[Member] = []

    def admit(self, member: Member) -> None:
        if member.done:
            raise ValueError(f"a member with no step to run: {member.index} of {member.total}")
        self.members.append(member)

    def drop(self, member: Member) -> None:
        self.members.remove(member)

    @torch.inference_mode()
    def step(self) -> list[Member]:
        """One step of every member; returns those that ran their last step (they leave)."""
        live = list(self.members)
        if not live:
            return []
        # 1. each member's model input at its own timestep
        ts = [m.timesteps[m.index] for m in live]
        scaled = [m.scheduler.scale_model_input(m.latents, t) for m, t in zip(live, ts, strict=True)]
        guided = [m.uncond is not None for m in live]
        # 2. one forward: every member's rows, then the null rows of the guided ones  (R, C, H, W)
        rows = [(x, t, m.cond) for m, x, t in zip(live, scaled, ts, strict=True)]
        rows += [(x, t, m.uncond) for m, x, t, g in zip(live, scaled, ts, guided, strict=True) if g]
        x_in = torch.cat([x for x, _, _ in rows])
        t_in = torch.cat([t.float().reshape(1).expand(len(x)) for x, t, _ in rows])
        kwargs = {}
        if self.cond_arg is not None:
            kwargs[self.cond_arg] = torch.cat([c for _, _, c in rows])  # type: ignore[misc]
        out = self.unet(x_in, t_in.to(x_in.device), **kwargs).sample
        # 3. per member: guidance, clipping, its own scheduler step, inpainting
        sizes = [len(x) for x, _, _ in rows]
        parts = list(out.split(sizes))
        nulls = iter(parts[len(live):])
        for m, x_t, t, eps, g in zip(live, scaled, ts, parts[: len(live)], guided, strict=True):
            if g:
                eps_null = next(nulls)
                eps = eps_null + m.guidance_scale * (eps - eps_null)
            if m.clip_sample is not None:
                eps = clip_through_x0(m.scheduler, x_t, eps, t, m.clip_sample,
                                      m.scheduler.config.prediction_type)
            output = m.scheduler.step(eps, t, m.latents, generator=m.generators)
            m.latents = output.prev_sample
            m.index += 1
            if m.known is not None and m.init is not None and m.noise is not None:
                back = m.init
                if not m.done:  # the known pixels, noised to the next step's level
                    level = m.timesteps[m.index : m.index + 1].repeat(len(m.init))
                    back = m.scheduler.add_noise(m.init, m.noise, level)
                m.latents = m.known * back.to(m.latents.dtype) + (1 - m.known) * m.latents
            x0 = predicted_x0(m.scheduler, output)
            m.x0 = x0 if x0 is not None else m.latents
        finished = [m for m in live if m.done]
        for m in finished:
            self.members.remove(m)
        return finished


class Schedulers:
    """Fresh scheduler instances, copied from a pristine one per kind: building a scheduler
    computes its noise schedule (a Python loop over a thousand steps for a cosine one),
    which would cost every job joining a loop more than a step of the loop."""

    def __init__(self, make: Callable[[str], Any]) -> None:
        self.make = make
        self.pristine: dict[str, Any] = {}

    def __call__(self, name: str) -> Any:
        if name not in self.pristine:
            self.pristine[name] = self.make(name)
        return copy.deepcopy(self.pristine[name])


class Stepper(Protocol):
    """What a predictor offers for step-level batching (``Predictor.stepper()``)."""

    def key(self, request: Request) -> Hashable | None:
        """Requests with equal keys may share a loop; None: this one runs statically."""

    def loop(self) -> StepLoop:
        """An empty loop on the model's UNet."""

    def begin(self, request: Request) -> Member:
        """The request as a member ready to run its first step (checks it as ``predict`` does)."""

    def finish(self, member: Member) -> dict[str, Any]:
        """The result of a member that ran its last step, as ``predict`` would return it."""

    def preview(self, member: Member) -> Artifact:
        """A preview of the member's latest prediction of its clean images."""


class DiffusionStepper:
    """Step-level batching of the class-conditional DDPM (``models.diffusion``): steps,
    scheduler, guidance, class and edits are each member's own, so any two of its requests
    share a loop."""

    def __init__(self, predictor: DiffusionPredictor) -> None:
        self.predictor = predictor
        self.schedulers = Schedulers(lambda name: make_scheduler(name, predictor.schedule))

    def key(self, request: Request) -> Hashable | None:
        return (request.kind,)

    def loop(self) -> StepLoop:
        return StepLoop(self.predictor.unet, "class_labels")

    @torch.inference_mode()
    def begin(self, request: Request) -> Member:
        p, inp = self.predictor, request.input
        p._check(request)
        seeds = list(inp.seeds)
        null = p.config.num_classes  # a request without a class samples unconditionally
        cls = null if inp.class_index is None else inp.class_index
        c, side = p.config.channels, p.config.sample_size
        noise, generators = per_image_noise(seeds, (c, side, side))
        noise = noise.to(p.device, p.dtype)
        init, known, repaint, given = p._edit_inputs([request])
        if init is not None:
            init = init.to(p.device, p.dtype)
        scheduler = self.schedulers(inp.scheduler)
        timesteps, latents = start_timesteps(scheduler, inp.steps, noise, init, strength_of(inp))
        labels = torch.full((len(seeds),), cls, device=p.device)
        guidance = inp.guidance_scale
        return Member(
            latents=latents, scheduler=scheduler, timesteps=timesteps, generators=generators,
            cond=labels, uncond=torch.full_like(labels, null) if guidance != 1.0 else None,
            guidance_scale=guidance, clip_sample=p.schedule.clip_sample, noise=noise,
            init=init, known=None if known is None else known.to(p.device, p.dtype),
            preview_every=inp.preview_every,
            context={"seeds": seeds, "class": cls, "repaint": repaint, "given": given},
        )

    @torch.inference_mode()
    def finish(self, member: Member) -> dict[str, Any]:
        p, ctx = self.predictor, member.context
        images = to_output_size(member.latents.cpu(), p.config)
        if ctx["repaint"] is not None:  # the kept pixels exactly as given
            images = ctx["repaint"] * images + (1 - ctx["repaint"]) * ctx["given"]
        meta: dict[str, Any] = {}
        if ctx["class"] != p.config.num_classes:
            meta["class_label"] = p.labels[ctx["class"]]
        return {"images": [png_artifact(f"image-{i}.png", image, seed=seed, **meta)
                           for i, (image, seed) in enumerate(zip(images, ctx["seeds"], strict=True))]}

    @torch.inference_mode()
    def preview(self, member: Member) -> Artifact:
        assert member.x0 is not None, "a preview before the first step"
        return preview_artifact(member.index, member.x0)
