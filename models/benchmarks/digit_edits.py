"""Image-to-image and inpainting with ``ddpm-digits``, judged by ``lenet5-digits`` on the
held-out digits (part of ``convoy bench sampler``).

- inpainting: half of each held-out digit is masked (white = repaint) and inpainted as
  its own class; the figure is the share LeNet-5 recognises as that class. The kept half
  comes back as given, so this measures whether the model finishes a half-drawn digit.
- image-to-image (SDEdit): each held-out digit, noised to ``strength``, is denoised to
  the next class ((label + 1) mod 10); the share judged as that class, by strength.

Every image goes through the served ``DiffusionPredictor`` (PNG in, PNG out), all requests
of a row in one batch, DPM-Solver++ at 20 steps with the sidecar's guidance.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.data.digits import load_digits_split
from models.evaluation.digit_judge import judge, load_judge, noise_figures, real_roughness
from models.images import to_pil
from models.kinds.generate import GenerateArgs
from models.predictor import Request

SEED = 70_000  # first seed (disjoint from the sampler rows and the trainer's figures)
MASKS = ("bottom", "right")  # the half repainted
STRENGTHS = (0.5, 0.7, 0.9)
STEPS = 20


def half_mask(side: int, half: str) -> Image.Image:
    """White (repaint) over the named half of a side x side image."""
    mask = np.zeros((side, side), dtype=np.uint8)
    if half == "bottom":
        mask[side // 2 :] = 255
    elif half == "right":
        mask[:, side // 2 :] = 255
    else:
        raise ValueError(f"unknown half {half!r}; known: {MASKS}")
    return Image.fromarray(mask)


def _run(predictor: Any, inputs: list[dict[str, Any]], chunk: int = 150) -> torch.Tensor:
    """Images (N, 1, 32, 32) in [0, 1] for one request per input."""
    out = []
    for start in range(0, len(inputs), chunk):
        batch = [
            Request("generate", GenerateArgs(
                seeds=[SEED + start + i], steps=STEPS, scheduler="dpmpp",
                guidance_scale=predictor.guidance, **inp,
            ))
            for i, inp in enumerate(inputs[start : start + chunk])
        ]
        for result in predictor.predict(batch):
            data = result["images"][0].data
            pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32)
            out.append(torch.from_numpy(pixels / 255)[None])
    return torch.stack(out)


def rows(
    predictor: Any,
    limit: int | None = None,
    masks: tuple[str, ...] = MASKS,
    strengths: tuple[float, ...] = STRENGTHS,
) -> list[dict[str, Any]]:
    """Inpainting and image-to-image figures of a loaded ``ddpm-digits`` predictor on the
    first ``limit`` held-out digits (all of them by default)."""
    _, _, x_test, y_test = load_digits_split(32)
    if limit is not None:
        x_test, y_test = x_test[:limit], y_test[:limit]
    pictures = [to_pil(x) for x in x_test]
    judge_model, real = load_judge(), real_roughness()
    side = x_test.shape[-1]
    found: list[dict[str, Any]] = []
    for half in masks:
        mask = half_mask(side, half)
        inputs = [
            {"image": p, "mask": mask, "class_index": int(y)}
            for p, y in zip(pictures, y_test, strict=True)
        ]
        images = _run(predictor, inputs)
        predicted, _ = judge(judge_model, images)
        found.append({
            "edit": f"inpaint {half} half", "strength": 1.0, "target": "own class",
            "recognised": round(float((predicted == y_test).float().mean()), 4),
            **noise_figures(images, real), "images": len(y_test),
        })
    target = (y_test + 1) % 10
    for strength in strengths:
        inputs = [
            {"image": p, "strength": strength, "class_index": int(t)}
            for p, t in zip(pictures, target, strict=True)
        ]
        images = _run(predictor, inputs)
        predicted, _ = judge(judge_model, images)
        found.append({
            "edit": "image-to-image", "strength": strength, "target": "next class",
            "recognised": round(float((predicted == target).float().mean()), 4),
            **noise_figures(images, real), "images": len(y_test),
        })
    return found


def load_predictor() -> Any:
    """The served ``ddpm-digits`` predictor from the built-in catalog."""
    from models.catalog import Catalog
    from models.diffusion import DiffusionPredictor

    predictor = DiffusionPredictor(Catalog.load().get("ddpm-digits"))
    predictor.load()
    predictor.guidance = float(predictor.entry.sidecar.get("guidance_scale", 2.0))
    return predictor


def print_table(found: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ddpm-digits edits of the held-out digits, judged by lenet5-digits")
    for column in ("edit", "strength", "target", "images", "recognised", "noisy", "rough/real"):
        table.add_column(column, justify="left" if column in ("edit", "target") else "right")
    for r in found:
        table.add_row(
            r["edit"], f"{r['strength']:.1f}", r["target"], str(r["images"]),
            f"{r['recognised']:.1%}", f"{r['noisy_share']:.1%}",
            f"{r['roughness_median_vs_real']:.2f}",
        )
    Console(width=max(100, Console().width)).print(table)
