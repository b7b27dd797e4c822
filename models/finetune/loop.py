"""The transfer training loop: bounded hyperparameters, progress, cancel, deadline, and a
checkpoint per epoch to resume from.

The loop knows nothing of jobs: ``Hooks`` receives a progress report after every step
(and returns whether to go on: a canceled or late job stops at its next step), and a
checkpoint after every epoch (model and optimizer tensors, plus the loop's own state as
JSON). Given a checkpoint back, ``fit`` starts at the epoch after it. The data order of
every epoch comes from the seed and the epoch's number, so a resumed run draws the same
batches the uninterrupted one would have.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from PIL import Image

from models.data.digits import augment as affine_jitter
from models.finetune.transfer import MODES, Base, Mode, Prepared, prepare

BOUNDS = {  # name: (least, most), checked by Hyper and published by the job schema
    "epochs": (1, 200), "batch_size": (1, 256), "learning_rate": (1e-6, 1.0),
    "backbone_lr_factor": (0.0, 1.0), "val_share": (0.0, 0.5), "early_stopping": (0, 50),
}


@dataclass(frozen=True)
class Hyper:
    mode: Mode = "finetune"  # linear_probe | finetune | scratch
    epochs: int = 10  # passes over the training share
    batch_size: int = 32  # images per step
    learning_rate: float = 1e-3  # the head's (AdamW); the backbone's is this times the factor
    backbone_lr_factor: float = 0.1  # finetune: the backbone's rate over the head's
    augment: bool = True  # random shifts, small rotations and scaling of each batch
    val_share: float = 0.2  # of each class, held back to validate after every epoch
    early_stopping: int = 0  # stop after this many epochs without a better validation (0: never)
    seed: int = 0  # the split, the data order, the augmentation, the head's initial weights

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; known: {list(MODES)}")
        for name, (lo, hi) in BOUNDS.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ValueError(f"{name} {value} is outside {lo}..{hi}")


@dataclass
class Checkpoint:
    tensors: dict[str, torch.Tensor]  # "model.<name>" and "optim.<index>.<name>"
    state: dict[str, Any]  # epoch (completed), history, best, steps (done so far)


class Hooks(Protocol):
    def step(self, report: dict[str, Any]) -> bool:
        """After each step: the report; False stops the run (cancel, deadline)."""

    def epoch(self, report: dict[str, Any], checkpoint: Checkpoint) -> None:
        """After each epoch: its figures and the checkpoint to resume from."""


class Stopped(Exception):
    """The hooks asked the run to stop (``reason`` says why, as the hooks told it)."""


@dataclass
class Result:
    model: torch.nn.Module
    sidecar: dict[str, Any]  # rebuilds the model (arch, config, input, labels, metrics)
    metrics: dict[str, Any]
    steps: int  # steps run by this call (fewer than the total when resumed)
    resumed_from: int  # epochs done before this call


def split(targets: list[int], val_share: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, validation) indices: ``val_share`` of each class (at least one image of
    every class of two or more stays in training)."""
    gen = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in sorted(set(targets)):
        idx = [i for i, t in enumerate(targets) if t == c]
        order = [idx[int(j)] for j in torch.randperm(len(idx), generator=gen)]
        k = min(len(idx) - 1, round(len(idx) * val_share))
        val += order[:k]
        train += order[k:]
    return sorted(train), sorted(val)


def _logits(out: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Main logits and any auxiliary ones (GoogLeNet in training returns a tuple)."""
    if isinstance(out, tuple | list):
        return out[0], list(out[1:])
    return out, []


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    if len(y) == 0:
        return float("nan")
    was = model.training
    model.eval()
    correct = sum(int((_logits(model(x[i:i + batch]))[0].argmax(-1) == y[i:i + batch]).sum())
                  for i in range(0, len(y), batch))
    model.train(was)
    return correct / len(y)


def _flat_optimizer(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's state as named tensors (copies: training goes on in place)."""
    return {f"optim.{i}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().clone()
            for i, s in opt.state_dict()["state"].items() for k, v in s.items()}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def fit(base: Base, labels: list[str], images: list[Image.Image], targets: list[int],
        hyper: Hyper, hooks: Hooks | None = None, resume: Checkpoint | None = None,
        device: torch.device | str = "cpu") -> Result:
    """Train the base on the images in ``hyper.mode``; return the new model and figures."""
    if len(labels) < 2:
        raise ValueError(f"a classifier needs at least two classes, got {labels}")
    torch.manual_seed(hyper.seed)  # the new head's initial weights
    x_all = base.tensors(images)
    y_all = torch.tensor(targets, dtype=torch.long)
    train_idx, val_idx = split(targets, hyper.val_share, hyper.seed)
    x, y = x_all[train_idx].to(device), y_all[train_idx].to(device)
    xv, yv = x_all[val_idx].to(device), y_all[val_idx].to(device)
    prep = prepare(base, len(labels), hyper.mode, hyper.learning_rate, hyper.backbone_lr_factor)
    model = prep.model.to(device)
    opt = torch.optim.AdamW(prep.groups, weight_decay=1e-4)
    state: dict[str, Any] = {"epoch": 0, "history": [], "best": None, "since_best": 0,
                             "steps": 0}
    if resume is not None:
        model.load_state_dict({k[6:]: v for k, v in resume.tensors.items()
                               if k.startswith("model.")})
        _load_optimizer(opt, resume.tensors)
        state = dict(resume.state)
    resumed_from = state["epoch"]
    steps_per_epoch = math.ceil(len(y) / hyper.batch_size)
    total = hyper.epochs * steps_per_epoch
    started, run_steps = time.monotonic(), 0
    for epoch in range(resumed_from, hyper.epochs):
        if hyper.early_stopping and state["since_best"] >= hyper.early_stopping:
            break
        gen = torch.Generator().manual_seed(hyper.seed * 1_000_003 + epoch)
        order = torch.randperm(len(y), generator=gen)
        prep.train_mode(hyper.mode)
        seen = correct = 0
        loss_sum = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * hyper.batch_size:(i + 1) * hyper.batch_size]
            xb, yb = x[idx], y[idx]
            if hyper.augment:
                xb = affine_jitter(xb.cpu(), gen, max_shift=0.08, max_rotate=10.0,
                                   scale=(0.9, 1.1)).to(device)
            logits, aux = _logits(model(xb))
            loss = F.cross_entropy(logits, yb) + sum(0.3 * F.cross_entropy(a, yb) for a in aux)
            opt.zero_grad()
            loss.backward()
            opt.step()
            state["steps"] += 1
            run_steps += 1
            seen += len(yb)
            correct += int((logits.argmax(-1) == yb).sum())
            loss_sum += loss.item() * len(yb)
            elapsed = time.monotonic() - started
            report = {"epoch": epoch + 1, "epochs": hyper.epochs, "step": state["steps"],
                      "steps": total, "loss": round(loss.item(), 4),
                      "train_accuracy": round(correct / seen, 4),
                      "eta_s": round(elapsed / run_steps * (total - state["steps"]), 1)}
            if hooks is not None and not hooks.step(report):
                raise Stopped("stopped by its hooks")
        figures = {"epoch": epoch + 1, "loss": round(loss_sum / max(1, seen), 4),
                   "train_accuracy": round(correct / max(1, seen), 4),
                   "val_accuracy": round(accuracy(model, xv, yv), 4) if len(yv) else None}
        _track(state, figures)
        if hooks is not None:
            tensors = {f"model.{k}": v.detach().cpu().clone().contiguous()
                       for k, v in model.state_dict().items()}
            hooks.epoch({**figures, "epochs": hyper.epochs, "step": state["steps"],
                         "steps": total}, Checkpoint({**tensors, **_flat_optimizer(opt)},
                                                     dict(state)))
    return _result(base, labels, model, prep, hyper, state, run_steps, resumed_from,
                   {"train": len(y), "validation": len(yv)})


def _track(state: dict[str, Any], figures: dict[str, Any]) -> None:
    state["history"] = [*state["history"], figures]
    state["epoch"] = figures["epoch"]
    score = figures["val_accuracy"] if figures["val_accuracy"] is not None else -figures["loss"]
    if state["best"] is None or score > state["best"]:
        state["best"], state["since_best"] = score, 0
    else:
        state["since_best"] += 1


def _result(base: Base, labels: list[str], model: torch.nn.Module, prep: Prepared,
            hyper: Hyper, state: dict[str, Any], run_steps: int, resumed_from: int,
            sizes: dict[str, int]) -> Result:
    last = state["history"][-1] if state["history"] else {}
    metrics = {"val_accuracy": last.get("val_accuracy"), "train_accuracy": last.get("train_accuracy"),
               "loss": last.get("loss"), "epochs_run": state["epoch"], "images": sizes,
               "trainable_parameters": prep.trainable}
    model.eval()
    sidecar = {**base.sidecar(len(labels)), "labels": list(labels), "metrics": metrics,
               "finetune": {"base_model": base.name, "mode": hyper.mode,
                            "hyperparameters": asdict(hyper), "history": state["history"]}}
    return Result(model.cpu(), sidecar, metrics, run_steps, resumed_from)

