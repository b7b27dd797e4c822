"""Trainer for ``ddpm-digits``: class-conditional DDPM on the digits' training quarters.

The digits are 8x8 scans that the data loader upsamples to 32x32 bilinearly, so the model
works at their own 8x8 and its samples are upsampled the same way (``output_size``): a
32x32 model spends 16 times the pixels on interpolation, learns the last, fine-detail steps
slowly, and a model trained for an hour on a CPU left a third of its samples speckled.
At 8x8 a step costs a fraction as much, so the same hour buys ten times the steps.

The objective (Ho et al., 2020, with the velocity target of Salimans & Ho, 2022): noise an
image x0 in [-1, 1] to a uniformly drawn timestep t of a cosine schedule,
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, and regress v = sqrt(abar_t) eps -
sqrt(1 - abar_t) x0, each timestep weighted by min(SNR, 5) / (SNR + 1) (min-SNR weighting,
Hang et al., 2023), which keeps the near-clean steps from dominating the loss while still
training them. Labels are replaced by the null class with probability ``P_UNCOND`` so that
the same network also learns the unconditional model that classifier-free guidance needs.
Sampling uses an exponential moving average of the weights, which is what ships.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import config_dict, save_checkpoint
from models.data.digits import LABELS, load_digits_split
from models.diffusion import (
    DiffusionConfig,
    NoiseSchedule,
    build_unet,
    make_scheduler,
    per_image_noise,
    sample_loop,
    to_output_size,
)
from models.evaluation.digit_judge import (
    conditional_accuracy,
    frechet_distance,
    judge,
    load_judge,
    noise_figures,
    real_roughness,
    real_test_features,
)
from models.registry import register_trainer
from models.training.loop import batches, seed_everything, train_epochs

SIDE = 8  # the digits' own resolution, where the model works
STEPS = 2500  # optimiser steps (240 passes over the 1347 training digits)
BATCH = 128  # images per step
LR = 1e-3  # peak learning rate (linear warm-up, cosine decay)
EMA_DECAY = 0.999  # weight of the running average per step
MIN_SNR = 5.0  # cap of the signal-to-noise ratio in the loss weight
P_UNCOND = 0.1  # share of labels dropped to the null class
EVAL_GUIDANCE = 2.0  # guidance scale of the figures in the sidecar
EVAL_SEED = 30_000  # seeds of those figures


@torch.no_grad()
def generate_per_class(
    unet: torch.nn.Module,
    schedule: NoiseSchedule,
    config: DiffusionConfig,
    per_class: int,
    scheduler: str = "dpmpp",
    steps: int = 20,
    guidance_scale: float = EVAL_GUIDANCE,
    first_seed: int = EVAL_SEED,
    chunk: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` images of every class in [0, 1] and their classes, seeds from first_seed."""
    labels = torch.arange(config.num_classes).repeat_interleave(per_class)
    side = config.sample_size
    out = []
    for start in range(0, len(labels), chunk):
        part = labels[start : start + chunk]
        seeds = list(range(first_seed + start, first_seed + start + len(part)))
        noise, generators = per_image_noise(seeds, (config.channels, side, side))
        samples, _ = sample_loop(
            unet,
            make_scheduler(scheduler, schedule),
            steps,
            noise,
            generators,
            class_labels=part,
            null_class=config.num_classes,
            guidance_scale=guidance_scale,
            clip_sample=schedule.clip_sample,
        )
        out.append(to_output_size(samples, config))
    return torch.cat(out), labels


CONFIG = DiffusionConfig(
    sample_size=SIDE,
    block_out_channels=(32, 64, 128),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=16,
    output_size=32,
)
SCHEDULE = NoiseSchedule(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")


def lr_at(step: int, total: int, warmup: int = 50) -> float:
    """Linear warm-up then cosine decay to a tenth, as a multiple of LR."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


@register_trainer("ddpm-digits")
def train_ddpm_digits(out_dir: Path, *, seed: int = 0, quick: bool = False) -> dict[str, Any]:
    gen = seed_everything(seed)
    x_train, y_train, _, _ = load_digits_split(SIDE)
    x_train = x_train * 2 - 1  # images in [-1, 1]
    config, schedule = CONFIG, SCHEDULE
    unet = build_unet(config)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=LR, weight_decay=0.0)
    per_epoch = len(y_train) // BATCH
    epochs = 1 if quick else math.ceil(STEPS / per_epoch)
    per_epoch = 4 if quick else per_epoch
    total = epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, total))
    noise_sched = make_scheduler("ddpm", schedule)
    abar = noise_sched.alphas_cumprod
    snr = abar / (1 - abar)
    weight = snr.clamp(max=MIN_SNR) / (snr + 1)  # min-SNR weight of the v loss, per timestep
    order: list[torch.Tensor] = []
    step_no = [0]

    def step(epoch: int, i: int) -> dict[str, float]:
        if i == 0:
            order[:] = list(batches(len(y_train), BATCH, gen))
        idx = order[i]
        x0, y = x_train[idx], y_train[idx].clone()
        # 1. drop labels to the null class, draw timesteps and noise
        y[torch.rand(len(y), generator=gen) < P_UNCOND] = config.num_classes
        t = torch.randint(schedule.num_train_timesteps, (len(y),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        x_t = noise_sched.add_noise(x0, eps, t)
        target = noise_sched.get_velocity(x0, eps, t)
        # 2. regress the velocity, min-SNR weighted
        unet.train()
        err = (unet(x_t, t, class_labels=y).sample - target).pow(2).mean(dim=(1, 2, 3))
        loss = (weight[t] * err).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        # 3. moving average of the weights, its decay warming up (no memory of the random init)
        decay = min(EMA_DECAY, (1 + step_no[0]) / (10 + step_no[0]))
        step_no[0] += 1
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), unet.parameters(), strict=True):
                p_ema.lerp_(p, 1 - decay)
        return {"loss": loss.item()}

    seconds = train_epochs(step, epochs, per_epoch, desc="ddpm-digits")
    # 4. judge DPM-Solver++ samples (20 steps) of the averaged weights
    per_class = 2 if quick else 20
    images, labels = generate_per_class(ema, schedule, config, per_class)
    judge_model = load_judge()
    predicted, feats = judge(judge_model, images)
    metrics: dict[str, Any] = {
        "conditional_accuracy": round(conditional_accuracy(predicted, labels), 4),
        "frechet_distance": round(frechet_distance(feats, real_test_features(judge_model)), 3),
        **noise_figures(images, real_roughness()),
        "eval_sampler": f"dpmpp, 20 steps, guidance {EVAL_GUIDANCE}",
        "n_eval": len(labels),
        "judge": "lenet5-digits (conditional accuracy; Fréchet distance of penultimate features "
        "against the held-out digits)",
        "train_steps": total,
        "batch_size": BATCH,
        "train_seconds": round(seconds, 1),
        "split": "sklearn digits, train_test_split(test_size=0.25, random_state=0, stratify=y); "
        "training quarters only",
    }
    save_checkpoint(
        Path(out_dir) / "ddpm-digits.safetensors",
        ema,
        {
            "arch": "ddpm",
            "config": config_dict(config),
            "noise_schedule": config_dict(schedule),
            "labels": LABELS,
            "input": {
                "channels": config.channels,
                "height": config.output_size or config.sample_size,
                "width": config.output_size or config.sample_size,
            },
            "metrics": metrics,
            "seed": seed,
            "guidance_scale": EVAL_GUIDANCE,
        },
    )
    return metrics
