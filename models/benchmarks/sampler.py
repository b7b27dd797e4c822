"""``convoy bench sampler``: quality and speed of ``ddpm-digits`` per scheduler and step
count, and of ``dcgan-digits``, judged by ``lenet5-digits``.

For each row the same classes and seeds: ``PER_CLASS`` images of every digit. Figures:
conditional accuracy (share judged the requested class), a Fréchet distance between LeNet-5
penultimate features of the generated images and of the held-out real digits (lower is
better; it grows as the sample shrinks, so only rows of the same size compare), the noise
columns of ``digit_judge.noise_figures`` (share of samples rougher than twice the roughest
held-out digit; median roughness against the real digits' median), and images per second
on this machine. DDPM at 1000 steps is the slow reference row; rows of ``SLOW_STEPS`` steps
or more draw ``SLOW_PER_CLASS`` images per digit (the ``images`` column says how many).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import load_model
from models.evaluation.digit_judge import (
    conditional_accuracy,
    frechet_distance,
    judge,
    load_judge,
    noise_figures,
    real_roughness,
    real_test_features,
)

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
ROWS = [("ddpm", 1000), ("ddim", 50), ("dpmpp", 20), ("dpmpp", 10), ("euler", 20)]
PER_CLASS = 20  # images per digit and row: 200 per row
SEED = 50_000  # first seed of every row (disjoint from the trainers' evaluation seeds)
SLOW_STEPS = 500  # rows with at least this many steps draw fewer images...
SLOW_PER_CLASS = 20  # ...at most this many per digit (the first seeds of the full row)


def _figures(
    images: torch.Tensor, labels: torch.Tensor, real: torch.Tensor, judge_model: Any, seconds: float
) -> dict[str, Any]:
    predicted, feats = judge(judge_model, images)
    return {
        "conditional_accuracy": round(conditional_accuracy(predicted, labels), 4),
        "frechet_distance": round(frechet_distance(feats, real), 3),
        **noise_figures(images, real_roughness()),
        "images": len(labels),
        "seconds": round(seconds, 2),
        "images_per_s": round(len(labels) / seconds, 2),
    }


def diffusion_rows(
    per_class: int, judge_model: Any, real: torch.Tensor, slow_per_class: int = SLOW_PER_CLASS
) -> list[dict[str, Any]]:
    from models.diffusion import DiffusionConfig, NoiseSchedule, _from_json
    from models.training.ddpm_digits import generate_per_class

    unet, sidecar = load_model(WEIGHTS / "ddpm-digits.safetensors")
    config = _from_json(DiffusionConfig, sidecar["config"])
    schedule = _from_json(NoiseSchedule, sidecar["noise_schedule"])
    guidance = float(sidecar.get("guidance_scale", 2.0))
    rows = []
    for scheduler, steps in ROWS:
        start = time.perf_counter()
        with torch.inference_mode():
            images, labels = generate_per_class(
                unet,
                schedule,
                config,
                min(per_class, slow_per_class) if steps >= SLOW_STEPS else per_class,
                scheduler=scheduler,
                steps=steps,
                guidance_scale=guidance,
                first_seed=SEED,
            )
        rows.append(
            {
                "model": "ddpm-digits",
                "sampler": scheduler,
                "steps": steps,
                "network_evals": steps * 2,
                "guidance_scale": guidance,
                **_figures(images, labels, real, judge_model, time.perf_counter() - start),
            }
        )
    return rows


def gan_row(per_class: int, judge_model: Any, real: torch.Tensor) -> dict[str, Any]:
    from models.training.gan_digits import generate_per_class

    generator, _ = load_model(WEIGHTS / "dcgan-digits.safetensors")
    start = time.perf_counter()
    with torch.inference_mode():
        images, labels = generate_per_class(generator, per_class, SEED)  # type: ignore[arg-type]
    return {
        "model": "dcgan-digits",
        "sampler": "generator",
        "steps": 1,
        "network_evals": 1,
        "guidance_scale": None,
        **_figures(images, labels, real, judge_model, time.perf_counter() - start),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"sampler: class-conditional digits judged by lenet5-digits ({platform.machine()}, "
        f"{torch.get_num_threads()} threads)"
    )
    columns = ("model", "sampler", "steps", "net evals", "images", "cond. acc.", "Fréchet",
               "noisy", "rough/real", "images/s")
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "sampler") else "right")
    for r in rows:
        table.add_row(
            r["model"],
            r["sampler"],
            str(r["steps"]),
            str(r["network_evals"]),
            str(r["images"]),
            f"{r['conditional_accuracy']:.1%}",
            f"{r['frechet_distance']:.2f}",
            f"{r['noisy_share']:.1%}",
            f"{r['roughness_median_vs_real']:.2f}",
            f"{r['images_per_s']:.1f}",
        )
    Console(width=max(160, Console().width)).print(table)


def run(
    out_json: Path | None = None,
    per_class: int = PER_CLASS,
    slow_per_class: int = SLOW_PER_CLASS,
    edits: bool = True,
    edits_limit: int | None = None,
) -> list[dict[str, Any]]:
    """Every row of the benchmark (those whose weights exist); prints the table and writes JSON
    (with the image-to-image and inpainting figures of ``digit_edits`` under "edits")."""
    judge_model = load_judge()
    real = real_test_features(judge_model)
    rows: list[dict[str, Any]] = []
    if (WEIGHTS / "ddpm-digits.safetensors").exists():
        rows += diffusion_rows(per_class, judge_model, real, slow_per_class)
    if (WEIGHTS / "dcgan-digits.safetensors").exists():
        rows.append(gan_row(per_class, judge_model, real))
    if not rows:
        raise FileNotFoundError(
            "neither ddpm-digits nor dcgan-digits is trained: nothing to benchmark"
        )
    print_table(rows)
    report: dict[str, Any] = {"scenario": "sampler", "per_class": per_class, "rows": rows}
    if edits and (WEIGHTS / "ddpm-digits.safetensors").exists():
        from models.benchmarks import digit_edits

        report["edits"] = digit_edits.rows(digit_edits.load_predictor(), edits_limit)
        digit_edits.print_table(report["edits"])
    if out_json is not None:
        out_json = Path(out_json)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(report, indent=2) + "\n")
    return rows
