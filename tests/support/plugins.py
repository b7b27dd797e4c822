"""Predictor families for tests, loaded into workers through CONVOY_PLUGINS.

- ``sleepy``: an iterative ``generate`` predictor that sleeps ``step_s`` per step, reports
  every step, emits previews and honours cancellation — for cancel, SSE and fault tests.
- ``poison``: kills its worker process on every attempt.
- ``slow-diffusers``: a diffusers pipeline whose UNet sleeps ``step_s`` per forward, so
  that jobs can arrive while its sampling loop runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import torch

from models.images import png_artifact
from models.pipelines import PipelinePredictor
from models.predictor import Artifact, Predictor, Request, StepCallback
from models.registry import register_predictor


def _image(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, 8, 8, generator=g)


@register_predictor("sleepy")
class SleepyPredictor(Predictor):
    kinds = ("generate",)

    def load(self) -> None:
        self.step_s = float(self.entry.config.get("step_s", 0.05))
        # images that tell which process drew them (to see whose artifacts were kept)
        self.stamp = os.getpid() if self.entry.config.get("stamp_pid") else 0
        marker = self.entry.config.get("started_marker")
        self.marker = str(marker) if marker else None

    def batch_key(self, request: Request) -> Any:
        return (request.kind, request.input.steps)

    def predict(self, batch: list[Request], on_step: StepCallback | None = None
                ) -> list[dict[str, Any] | None]:
        live = list(range(len(batch)))
        total = batch[0].input.steps
        if self.marker:
            with open(self.marker, "a") as f:
                f.write(f"{os.getpid()}\n")
        for step in range(1, total + 1):
            time.sleep(self.step_s)
            if on_step is None:
                continue
            previews: Sequence[Artifact | None] = [
                png_artifact(f"preview-{step}.png", _image(step + self.stamp))
                if batch[i].input.preview_every and step % batch[i].input.preview_every == 0
                else None
                for i in live
            ]
            keep = on_step(step, total, previews)
            live = [i for i, k in zip(live, keep, strict=True) if k]
            if not live:
                break
        results: list[dict[str, Any] | None] = [None] * len(batch)
        for i in live:
            seeds = batch[i].input.seeds
            results[i] = {"images": [png_artifact(f"image-{j}.png", _image(s + self.stamp), seed=s)
                                     for j, s in enumerate(seeds)]}
        return results


@register_predictor("poison")
class PoisonPredictor(Predictor):
    kinds = ("generate",)

    def load(self) -> None:
        pass

    def predict(self, batch: list[Request], on_step: StepCallback | None = None
                ) -> list[dict[str, Any] | None]:
        os._exit(17)


@register_predictor("slow-diffusers")
class SlowPipelinePredictor(PipelinePredictor):
    def load(self) -> None:
        super().load()
        step_s, forward = float(self.entry.config.get("step_s", 0.05)), self.pipe.unet.forward

        def slowed(*args: Any, **kwargs: Any) -> Any:
            time.sleep(step_s)
            return forward(*args, **kwargs)

        self.pipe.unet.forward = slowed
