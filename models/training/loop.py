"""Training helpers shared by the trainers: seeding, a tqdm epoch loop, evaluation."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from tqdm import tqdm


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch.Generator for data order/augmentation."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def batches(
    n: int, batch_size: int, generator: torch.Generator, shuffle: bool = True
) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


def train_epochs(
    step: Callable[[int, int], dict[str, float]],
    epochs: int,
    steps_per_epoch: int,
    desc: str,
) -> float:
    """Run ``step(epoch, i) -> {"loss": ..., "acc": ...}`` with a progress bar
    (running means of the figures, ETA). Returns the wall time in seconds."""
    start = time.perf_counter()
    bar = tqdm(total=epochs * steps_per_epoch, desc=desc, unit="step", dynamic_ncols=True)
    for epoch in range(epochs):
        sums: dict[str, float] = {}
        for i in range(steps_per_epoch):
            figures = step(epoch, i)
            for key, value in figures.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix(
                epoch=f"{epoch + 1}/{epochs}", **{k: f"{v / (i + 1):.4f}" for k, v in sums.items()}
            )
            bar.update(1)
    bar.close()
    return time.perf_counter() - start


@torch.no_grad()
def evaluate_classifier(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Top-1 (and top-5 where there are at least 5 classes) accuracy on (x, y)."""
    model.eval()
    correct1 = correct5 = 0
    num_classes = 0
    for i in range(0, len(y), batch_size):
        xb = x[i : i + batch_size]
        if transform is not None:
            xb = transform(xb)
        logits = model(xb)
        num_classes = logits.shape[-1]
        yb = y[i : i + batch_size]
        correct1 += int((logits.argmax(-1) == yb).sum())
        if num_classes >= 5:
            top5 = logits.topk(5, dim=-1).indices
            correct5 += int((top5 == yb[:, None]).any(-1).sum())
    metrics: dict[str, Any] = {"top1": correct1 / len(y), "n_eval": len(y)}
    if num_classes >= 5:
        metrics["top5"] = correct5 / len(y)
    return metrics
