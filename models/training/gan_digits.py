"""Trainer for ``dcgan-digits``: a class-conditional DCGAN on the digits' training quarters.

Adversarial training with the usual stabilisers: Adam with beta1 = 0.5, one-sided label
smoothing (real targets 0.9), mild affine jitter of the real digits. GANs oscillate, so
every few epochs the generator is judged by ``lenet5-digits`` on a fixed set of latents
and the best snapshot is kept; the reported figures use other seeds.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models.checkpoint import config_dict, save_checkpoint
from models.data.digits import LABELS, augment, load_digits_split
from models.evaluation.digit_judge import (
    conditional_accuracy,
    frechet_distance,
    judge,
    load_judge,
    real_test_features,
)
from models.gan import DCGANConfig, Discriminator, Generator, latent_for_seed
from models.registry import register_trainer
from models.training.loop import batches, seed_everything, train_epochs

SELECT_SEED = 10_000  # seeds of the snapshot-selection latents
REPORT_SEED = 20_000  # seeds of the reported figures (disjoint from the above)
EPOCHS = 120  # full run: about 9 minutes on one CPU thread


@torch.no_grad()
def generate_per_class(
    model: Generator, per_class: int, first_seed: int, truncation: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` images of every class in [0, 1], seeds first_seed, first_seed + 1, ..."""
    config = model.config
    labels = torch.arange(config.num_classes).repeat_interleave(per_class)
    z = torch.stack(
        [
            latent_for_seed(first_seed + i, config, int(c), truncation)[0]
            for i, c in enumerate(labels)
        ]
    )
    was_training = model.training
    model.eval()
    images = (model(z, labels) + 1) / 2
    model.train(was_training)
    return images, labels


@register_trainer("dcgan-digits")
def train_dcgan_digits(out_dir: Path, *, seed: int = 0, quick: bool = False) -> dict[str, Any]:
    gen = seed_everything(seed)
    x_train, y_train, _, _ = load_digits_split(32)
    x_train = x_train * 2 - 1  # the generator's tanh range
    config = DCGANConfig(latent_dim=64, num_classes=10, embed_dim=32, g_width=48, d_width=48)
    g, d = Generator(config), Discriminator(config)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    epochs, batch_size, eval_every = (1, 64, 1) if quick else (EPOCHS, 64, 10)
    steps = len(y_train) // batch_size  # drop the ragged last batch (batch norm)
    judge_model = load_judge()
    order: list[torch.Tensor] = []
    best: dict[str, Any] = {"acc": -1.0, "epoch": 0, "state": None}

    def step(epoch: int, i: int) -> dict[str, float]:
        if i == 0:
            order[:] = list(batches(len(y_train), batch_size, gen))
        idx = order[i]
        real = (
            augment(x_train[idx] + 1, gen, max_shift=0.05, max_rotate=6.0, scale=(0.95, 1.05)) - 1
        )
        y = y_train[idx]
        z = torch.randn(len(idx), config.latent_dim, generator=gen)
        fake_y = torch.randint(config.num_classes, (len(idx),), generator=gen)
        fake = g(z, fake_y)
        # 1. discriminator: real → 0.9 (one-sided smoothing), fake → 0
        d_real, d_fake = d(real, y), d(fake.detach(), fake_y)
        loss_d = F.binary_cross_entropy_with_logits(
            d_real, torch.full_like(d_real, 0.9)
        ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        # 2. generator: make the discriminator call its images real
        d_gen = d(fake, fake_y)
        loss_g = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        # 3. every few epochs, judge a fixed set of latents and keep the best snapshot
        if i == steps - 1 and (epoch + 1) % eval_every == 0:
            images, labels = generate_per_class(g, 10, SELECT_SEED)
            acc = conditional_accuracy(judge(judge_model, images)[0], labels)
            if acc >= best["acc"]:
                best.update(acc=acc, epoch=epoch + 1, state=copy.deepcopy(g.state_dict()))
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "best_acc": max(best["acc"], 0.0)}

    seconds = train_epochs(step, epochs, steps, desc="dcgan-digits")
    g.load_state_dict(best["state"])
    g.eval()
    per_class = 10 if quick else 100
    images, labels = generate_per_class(g, per_class, REPORT_SEED)
    predicted, feats = judge(judge_model, images)
    metrics: dict[str, Any] = {
        "conditional_accuracy": round(conditional_accuracy(predicted, labels), 4),
        "frechet_distance": round(frechet_distance(feats, real_test_features(judge_model)), 3),
        "n_eval": len(labels),
        "judge": "lenet5-digits (conditional accuracy; Fréchet distance of penultimate features "
        "against the held-out digits)",
        "selected_epoch": best["epoch"],
        "epochs": epochs,
        "train_seconds": round(seconds, 1),
        "split": "sklearn digits, train_test_split(test_size=0.25, random_state=0, stratify=y); "
        "training quarters only",
    }
    save_checkpoint(
        Path(out_dir) / "dcgan-digits.safetensors",
        g,
        {
            "arch": "dcgan",
            "config": config_dict(config),
            "labels": LABELS,
            "input": {"channels": 1, "height": 32, "width": 32},
            "metrics": metrics,
            "seed": seed,
        },
    )
    return metrics
