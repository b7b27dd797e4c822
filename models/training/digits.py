"""Trainer for ``lenet5-digits``: LeNet-5 on the digits' training three quarters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models.checkpoint import config_dict, save_checkpoint
from models.classification.lenet import LeNet5, LeNet5Config
from models.data.digits import LABELS, augment, load_digits_split
from models.registry import register_trainer
from models.training.loop import batches, evaluate_classifier, seed_everything, train_epochs


@register_trainer("lenet5-digits")
def train_lenet5_digits(out_dir: Path, *, seed: int = 0, quick: bool = False) -> dict[str, Any]:
    gen = seed_everything(seed)
    x_train, y_train, x_test, y_test = load_digits_split(32)
    config = LeNet5Config(in_channels=1, num_classes=10, activation="relu", pooling="max")
    model = LeNet5(config)
    epochs, batch_size = (1, 64) if quick else (60, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = (len(y_train) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * steps)
    order: list[torch.Tensor] = []

    def step(epoch: int, i: int) -> dict[str, float]:
        if i == 0:
            order[:] = list(batches(len(y_train), batch_size, gen))
        model.train()
        idx = order[i]
        xb = augment(x_train[idx], gen, max_shift=0.08, max_rotate=10.0, scale=(0.9, 1.1))
        logits = model(xb)
        loss = F.cross_entropy(logits, y_train[idx], label_smoothing=0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        acc = (logits.argmax(-1) == y_train[idx]).float().mean()
        return {"loss": loss.item(), "acc": acc.item()}

    seconds = train_epochs(step, epochs, steps, desc="lenet5-digits")
    metrics = evaluate_classifier(model, x_test, y_test)
    metrics.update(split="sklearn digits, train_test_split(test_size=0.25, random_state=0, stratify=y)",
                   train_seconds=round(seconds, 1), epochs=epochs)
    save_checkpoint(
        Path(out_dir) / "lenet5-digits.safetensors",
        model,
        {
            "arch": "lenet5",
            "config": config_dict(config),
            "labels": LABELS,
            "input": {"channels": 1, "height": 32, "width": 32},
            "metrics": metrics,
            "seed": seed,
        },
    )
    return metrics
