"""Trainer for ``unet-shapes``: a U-Net segmenting shapes scenes into background + 4 shapes.

Every epoch draws fresh scenes from its own training seed (``SEEDS["train"] + epoch``), so
the model never sees the same scene twice; evaluation uses scenes from ``SEEDS["test"]``,
which training never draws. Augmentations the task is invariant to (flips, quarter turns,
colour changes, mild blur and noise) keep the model from leaning on the generator's quirks.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models.checkpoint import config_dict, save_checkpoint
from models.data.shapes import SEEDS, SHAPE_LABELS, make_scenes
from models.registry import register_trainer
from models.segmentation.unet import UNet, UNetConfig
from models.training.loop import batches, seed_everything, train_epochs

SEG_LABELS = ["background", *SHAPE_LABELS]


def augment_scenes(
    x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip / rotate image and mask together; jitter colours, blur and noise the image only."""
    b = x.shape[0]
    # 1. geometry: a random element of the square's symmetry group, per batch
    k = int(torch.randint(0, 4, (1,), generator=gen))
    x, mask = torch.rot90(x, k, (-2, -1)), torch.rot90(mask, k, (-2, -1))
    if torch.rand(1, generator=gen) < 0.5:
        x, mask = x.flip(-1), mask.flip(-1)
    # 2. colour: channel order, per-image contrast and brightness
    x = x[:, torch.randperm(3, generator=gen)]
    contrast = 0.7 + 0.6 * torch.rand(b, 1, 1, 1, generator=gen)
    bright = 0.15 * (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1)
    x = (x - 0.5) * contrast + 0.5 + bright
    # 3. softened edges (anti-aliased renderers, resized uploads) on a third of the images
    blur = torch.rand(b, generator=gen) < 0.33
    if blur.any():
        kernel = torch.tensor([0.25, 0.5, 0.25])
        kernel = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)
        x[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    # 4. sensor noise
    sigma = 0.04 * torch.rand(b, 1, 1, 1, generator=gen)
    x = x + sigma * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1), mask


def dice_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over classes: weighs small classes as much as the background."""
    probs = logits.softmax(1)  # (B, K, H, W)
    onehot = F.one_hot(mask, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    inter = (probs * onehot).sum((0, 2, 3))
    total = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1 - ((2 * inter + 1) / (total + 1)).mean()


@torch.no_grad()
def evaluate_segmentation(
    model: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor, labels: list[str],
    batch_size: int = 64,
) -> dict[str, Any]:
    """Per-class IoU (intersection / union summed over the set), their mean, pixel accuracy."""
    model.eval()
    k = len(labels)
    inter = torch.zeros(k, dtype=torch.long)
    union = torch.zeros(k, dtype=torch.long)
    correct = 0
    for i in range(0, len(x), batch_size):
        pred = model(x[i : i + batch_size]).argmax(1)
        true = mask[i : i + batch_size]
        correct += int((pred == true).sum())
        for c in range(k):
            p, t = pred == c, true == c
            inter[c] += int((p & t).sum())
            union[c] += int((p | t).sum())
    iou = {labels[c]: float(inter[c]) / max(int(union[c]), 1) for c in range(k)}
    return {
        "mean_iou": sum(iou.values()) / k,
        "iou": iou,
        "pixel_accuracy": correct / mask.numel(),
        "n_eval": len(x),
    }


@register_trainer("unet-shapes")
def train_unet_shapes(out_dir: Path, *, seed: int = 0, quick: bool = False) -> dict[str, Any]:
    gen = seed_everything(seed)
    config = UNetConfig(in_channels=3, num_classes=len(SEG_LABELS), base_width=16, depth=3,
                        norm="batch", dropout=0.1)
    model = UNet(config)
    epochs, per_epoch, batch_size = (1, 256, 32) if quick else (20, 2048, 32)
    steps = per_epoch // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * steps,
                                                pct_start=0.15)
    data: dict[str, Any] = {}

    def step(epoch: int, i: int) -> dict[str, float]:
        if i == 0:  # a fresh set of scenes each epoch, from a seed of its own
            data["x"], data["mask"] = make_scenes(per_epoch, SEEDS["train"] + seed * 1000 + epoch)
            data["order"] = list(batches(per_epoch, batch_size, gen))
        model.train()
        idx = data["order"][i]
        xb, mb = augment_scenes(data["x"][idx], data["mask"][idx], gen)
        logits = model(xb)
        loss = F.cross_entropy(logits, mb) + dice_loss(logits, mb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        acc = (logits.argmax(1) == mb).float().mean()
        return {"loss": loss.item(), "acc": acc.item()}

    seconds = train_epochs(step, epochs, steps, desc="unet-shapes")
    start = time.perf_counter()
    x_test, mask_test = make_scenes(256 if quick else 2000, SEEDS["test"])
    metrics = evaluate_segmentation(model, x_test, mask_test, SEG_LABELS)
    metrics.update(
        split=f"make_scenes(n, SEEDS['test']={SEEDS['test']}); training seeds "
              f"{SEEDS['train']}+{seed * 1000}..+{epochs - 1}",
        train_seconds=round(seconds, 1), eval_seconds=round(time.perf_counter() - start, 1),
        epochs=epochs, scenes_seen=epochs * per_epoch,
    )
    save_checkpoint(
        Path(out_dir) / "unet-shapes.safetensors",
        model,
        {
            "arch": "unet",
            "config": config_dict(config),
            "labels": SEG_LABELS,
            "input": {"channels": 3, "height": 64, "width": 64},
            "metrics": metrics,
            "seed": seed,
        },
    )
    return metrics
