"""Trainers for the shapes classifiers: ``alexnet-shapes``, ``vgg11-shapes``,
``googlenet-shapes`` and ``resnet18-shapes``.

Each epoch draws fresh samples from the procedural shapes set (seeds in the training range
only), augments them with random crops, mirror flips and an occasional blur (so that
anti-aliased drawings, or images resized on the way in, look familiar). AlexNet trains
with its paper's recipe (SGD, momentum 0.9, weight decay 5e-4, batch 128); the later
families with AdamW and a one-cycle schedule (see the note above their trainers). The
held-out figures come from ``SEEDS["test"]``, evaluated once at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import config_dict, save_checkpoint
from models.classification.alexnet import AlexNet, AlexNetConfig
from models.classification.googlenet import GoogLeNet, GoogLeNetConfig, googlenet_loss
from models.classification.resnet import ResNet, ResNetConfig
from models.classification.vgg import VGG, VGGConfig
from models.data.shapes import SEEDS, SHAPE_LABELS, SIZE, TRAIN_STREAMS, make_classification
from models.registry import register_trainer
from models.training.loop import evaluate_classifier, seed_everything, train_epochs

N_TEST = 4000  # held-out samples from SEEDS["test"]


@dataclass(frozen=True)
class Recipe:
    epochs: int  # passes, each over `epoch_size` freshly drawn samples
    lr: float  # peak learning rate of the one-cycle schedule (warm-up 15 %, then annealing)
    weight_decay: float  # decoupled for AdamW, L2 for SGD
    optimizer: str = "adamw"  # "sgd" (momentum, fixed) or "adamw"
    epoch_size: int = 4096  # samples drawn per epoch
    batch_size: int = 128  # samples per step
    momentum: float = 0.9  # SGD momentum
    std: str = "data"  # input scaling after mean subtraction: "unit" (mean only) or "data"


def augment(
    x: torch.Tensor, gen: torch.Generator, pad: int = 4, blur_p: float = 0.3
) -> torch.Tensor:
    """Random crops (edge-padded by ``pad``), mirror flips and, with probability ``blur_p``,
    a down-and-up resampling blur of a (B, C, H, W) batch."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(b, x.shape[1], h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(b, x.shape[1], h, w)
    out = out.gather(3, cols)
    flip = torch.rand(b, generator=gen) < 0.5
    out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    blur = torch.rand(b, generator=gen) < blur_p
    if blur.any():
        scale = float(0.4 + 0.5 * torch.rand((), generator=gen))  # one factor per batch
        small = F.interpolate(out[blur], scale_factor=scale, mode="bilinear", antialias=True)
        out[blur] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return out


def _normalize(recipe: Recipe, gen_seed: int) -> dict[str, list[float]]:
    """Per-channel mean (and std, when the recipe scales) of a training draw."""
    x, _ = make_classification(1024, SEEDS["train"] + gen_seed)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)) if recipe.std == "data" else torch.ones(3)
    return {"mean": [round(float(v), 4) for v in mean], "std": [round(float(v), 4) for v in std]}


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=recipe.lr,
            momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
        )
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}; use 'sgd' or 'adamw'")


def _train(
    name: str,
    arch: str,
    model: nn.Module,
    config: Any,
    recipe: Recipe,
    out_dir: Path,
    *,
    seed: int,
    quick: bool,
    export: Callable[[nn.Module], tuple[nn.Module, Any]] | None = None,
    n_test: int | None = None,
) -> dict[str, Any]:
    gen = seed_everything(seed)
    if quick:
        recipe = replace(recipe, epochs=1, epoch_size=4 * recipe.batch_size)
    # Training streams: seed * 10_000 + epoch, all below TRAIN_STREAMS (held-out seeds lie beyond).
    stream = seed * 10_000
    if not 0 <= stream + recipe.epochs + 1 < TRAIN_STREAMS:
        raise ValueError(f"seed {seed} puts training streams outside the training range")
    norm = _normalize(recipe, stream)
    mean = torch.tensor(norm["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(norm["std"]).view(1, 3, 1, 1)
    # channels-last runs the convolutions and (above all) max-pooling faster on CPUs
    model = model.to(memory_format=torch.channels_last)
    steps = recipe.epoch_size // recipe.batch_size
    total = recipe.epochs * steps
    opt = _optimizer(model, recipe)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=recipe.lr,
        total_steps=total,
        pct_start=0.15,
        cycle_momentum=recipe.optimizer == "adamw",  # SGD keeps the paper's fixed momentum
    )
    data: dict[str, torch.Tensor] = {}

    def step(epoch: int, i: int) -> dict[str, float]:
        if i == 0:  # a fresh draw each epoch
            data["x"], data["y"] = make_classification(
                recipe.epoch_size, SEEDS["train"] + stream + 1 + epoch
            )
        model.train()
        sl = slice(i * recipe.batch_size, (i + 1) * recipe.batch_size)
        xb = ((augment(data["x"][sl], gen) - mean) / std).contiguous(
            memory_format=torch.channels_last
        )
        yb = data["y"][sl]
        loss, logits = googlenet_loss(model(xb), yb)  # plain cross-entropy for plain logits
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        return {"loss": loss.item(), "acc": (logits.argmax(-1) == yb).float().mean().item()}

    cpu_start = time.process_time()
    seconds = train_epochs(step, recipe.epochs, steps, desc=name)
    cpu_seconds = time.process_time() - cpu_start  # apart from other processes' load
    if export is not None:
        model, config = export(model)
    x_test, y_test = make_classification(n_test or (512 if quick else N_TEST), SEEDS["test"])
    metrics = evaluate_classifier(model, x_test, y_test, transform=lambda x: (x - mean) / std)
    metrics.update(
        split=f"shapes make_classification(n={len(y_test)}, seed=SEEDS['test']={SEEDS['test']})",
        train_seconds=round(seconds, 1),
        train_cpu_seconds=round(cpu_seconds, 1),
        epochs=recipe.epochs,
        train_samples=recipe.epochs * steps * recipe.batch_size,
    )
    save_checkpoint(
        Path(out_dir) / f"{name}.safetensors",
        model,
        {
            "arch": arch,
            "config": config_dict(config),
            "labels": SHAPE_LABELS,
            "input": {"channels": 3, "height": SIZE, "width": SIZE},
            "normalize": norm,
            "metrics": metrics,
            "seed": seed,
            "recipe": config_dict(recipe),
        },
    )
    return metrics


@register_trainer("alexnet-shapes")
def train_alexnet_shapes(out_dir: Path, *, seed: int = 0, quick: bool = False) -> dict[str, Any]:
    # The paper's recipe: SGD, momentum 0.9, weight decay 5e-4, batch 128, crops and flips,
    # per-channel mean subtraction only. No local response normalisation: it more than
    # doubles the step time on a CPU, and VGG's authors found it does not help.
    config = AlexNetConfig(num_classes=len(SHAPE_LABELS), image_size=SIZE, norm="none")
    recipe = Recipe(epochs=90, lr=0.01, weight_decay=5e-4, optimizer="sgd", std="unit")
    torch.manual_seed(seed)
    return _train(
        "alexnet-shapes",
        "alexnet",
        AlexNet(config),
        config,
        recipe,
        out_dir,
        seed=seed,
        quick=quick,
    )


# The later families train with AdamW: on this data SGD sits at chance for tens of
# thousands of samples before it finds the shapes, a budget a one-thread CPU run lacks.


@register_trainer("vgg11-shapes")
def train_vgg11_shapes(out_dir: Path, *, seed: int = 0, quick: bool = False) -> dict[str, Any]:
    config = VGGConfig(
        num_classes=len(SHAPE_LABELS),
        image_size=SIZE,
        depth=11,
        widths=(12, 24, 48, 96, 96),
        hidden=128,
    )
    recipe = Recipe(epochs=60, lr=3e-3, weight_decay=1e-4)
    torch.manual_seed(seed)
    return _train(
        "vgg11-shapes", "vgg", VGG(config), config, recipe, out_dir, seed=seed, quick=quick
    )


def _drop_aux(model: nn.Module) -> tuple[nn.Module, GoogLeNetConfig]:
    """The inference network: the same weights without the auxiliary classifiers."""
    assert isinstance(model, GoogLeNet)
    config = replace(model.config, aux_logits=False)
    served = GoogLeNet(config)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("aux1.", "aux2."))}
    served.load_state_dict(state)
    return served.eval(), config


@register_trainer("googlenet-shapes")
def train_googlenet_shapes(out_dir: Path, *, seed: int = 0, quick: bool = False) -> dict[str, Any]:
    config = GoogLeNetConfig(
        num_classes=len(SHAPE_LABELS), width_divisor=8, stem_width=16, aux_hidden=64
    )
    recipe = Recipe(epochs=60, lr=3e-3, weight_decay=1e-4)
    torch.manual_seed(seed)
    return _train(
        "googlenet-shapes",
        "googlenet",
        GoogLeNet(config),
        config,
        recipe,
        out_dir,
        seed=seed,
        quick=quick,
        export=_drop_aux,
    )


@register_trainer("resnet18-shapes")
def train_resnet18_shapes(out_dir: Path, *, seed: int = 0, quick: bool = False) -> dict[str, Any]:
    config = ResNetConfig(num_classes=len(SHAPE_LABELS), block="basic", layers=(2, 2, 2, 2))
    recipe = Recipe(epochs=60, lr=3e-3, weight_decay=1e-4)
    torch.manual_seed(seed)
    return _train(
        "resnet18-shapes", "resnet", ResNet(config), config, recipe, out_dir, seed=seed, quick=quick
    )


def evaluate_checkpoint(weights: Path, n: int = N_TEST) -> dict[str, Any]:
    """Held-out figures of a shipped shapes classifier, recomputed from its weights file.

    ``python -c "from models.training.shapes import evaluate_checkpoint as e;
    print(e('models/weights/resnet18-shapes.safetensors'))"``
    """
    from models.checkpoint import load_model

    model, sidecar = load_model(Path(weights))
    mean = torch.tensor(sidecar["normalize"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(sidecar["normalize"]["std"]).view(1, 3, 1, 1)
    x, y = make_classification(n, SEEDS["test"])
    return evaluate_classifier(model, x, y, transform=lambda t: (t - mean) / std)
