"""The base model with a new head, and what trains in each mode.

The *head* is every parameter whose shape depends on the number of classes: the network
is built twice on the meta device (no memory, no time), with K and K + 1 classes, and the
parameters that differ are the head. That finds LeNet-5's and AlexNet's last layer,
GoogLeNet's auxiliary classifiers as well as its own, and any torchvision architecture's
``fc`` or ``classifier[-1]``, without a per-family list.

- ``linear_probe``: the base's weights, the backbone frozen (and kept in eval mode, so its
  batch-norm statistics stay those of the base), a new head trained;
- ``finetune``: the base's weights, every layer trained, the backbone at the head's
  learning rate times a factor (0.1 by default);
- ``scratch``: the same architecture from random weights, every layer at the head's rate
  (the comparison that says what the base was worth).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from PIL import Image
from torch import nn

from models.checkpoint import load_sidecar, load_state
from models.finetune import FAMILIES
from models.images import batch_tensor, normalization

if TYPE_CHECKING:
    from models.catalog import ModelEntry

Mode = Literal["linear_probe", "finetune", "scratch"]
MODES: tuple[Mode, ...] = ("linear_probe", "finetune", "scratch")
BUILTIN_FAMILIES = tuple(f for f in FAMILIES if f != "torchvision")


@dataclass
class Base:
    """What a transfer needs of a catalog classifier."""

    name: str
    family: str  # a built-in family, or "torchvision"
    arch: str
    config: dict[str, Any]  # built-in families: the architecture's config
    input: dict[str, int]  # channels, height, width
    normalize: dict[str, list[float]] = field(default_factory=dict)  # built-ins' sidecar
    weights: Path | None = None
    sha256: str | None = None

    @classmethod
    def from_entry(cls, entry: ModelEntry) -> Base:
        if "classify" not in entry.kinds:
            raise ValueError(f"model {entry.name} does not classify: it cannot be a base")
        if entry.weights is None:
            raise ValueError(f"model {entry.name} has no weights to start from")
        spec = entry.input.model_dump()
        if entry.family == "torchvision":
            assert entry.arch is not None, f"{entry.name} names no torchvision arch"
            return cls(entry.name, "torchvision", entry.arch, {}, spec, weights=entry.weights,
                       sha256=entry.sha256)
        if entry.family not in BUILTIN_FAMILIES:
            raise ValueError(f"model {entry.name} ({entry.family}) cannot be fine-tuned; "
                             f"families that can: {', '.join(FAMILIES)}")
        sidecar = load_sidecar(entry.weights)
        return cls(entry.name, entry.family, sidecar["arch"], dict(sidecar.get("config", {})),
                   spec, dict(sidecar.get("normalize") or {}), entry.weights, entry.sha256)

    def build(self, num_classes: int) -> nn.Module:
        """The architecture with ``num_classes`` outputs and random weights."""
        if self.family == "torchvision":
            from models.classification.torchvision_predictor import build

            return build(self.arch, num_classes)
        from models.registry import get_model

        model: nn.Module = get_model(self.arch, **{**self.config, "num_classes": num_classes})
        return model

    def head_names(self, num_classes: int) -> set[str]:
        """Parameters and buffers whose shape depends on the number of classes."""
        with torch.device("meta"):
            a = self.build(num_classes).state_dict()
            b = self.build(num_classes + 1).state_dict()
        return {k for k in a if k not in b or a[k].shape != b[k].shape}

    def sidecar(self, num_classes: int) -> dict[str, Any]:
        """The new model's sidecar fields that rebuild it (labels and metrics added later)."""
        if self.family == "torchvision":
            return {"arch": self.arch, "family": "torchvision", "input": self.input}
        return {"arch": self.arch, "config": {**self.config, "num_classes": num_classes},
                "input": self.input, **({"normalize": self.normalize} if self.normalize else {})}

    def tensors(self, images: list[Image.Image]) -> torch.Tensor:
        """(B, C, H, W) as the base's predictor prepares them: resized, normalised."""
        c, h, w = self.input["channels"], self.input["height"], self.input["width"]
        if self.family == "torchvision":
            from models.classification.torchvision_predictor import _resize_crop, preprocess_for

            p = preprocess_for(self.arch, h)
            x = torch.stack([_resize_crop(im, p) for im in images])
            mean = torch.tensor(p.mean).view(1, 3, 1, 1)
            std = torch.tensor(p.std).view(1, 3, 1, 1)
            return (x - mean) / std
        mean, std = normalization({"normalize": self.normalize}, c)
        return (batch_tensor(images, c, h, w) - mean) / std


@dataclass
class Prepared:
    model: nn.Module
    head: set[str]  # parameter names of the new head
    groups: list[dict[str, Any]]  # optimizer parameter groups (head first)

    @property
    def trainable(self) -> int:
        return sum(p.numel() for g in self.groups for p in g["params"])

    def train_mode(self, mode: Mode) -> None:
        """Train mode, except a linear probe's frozen backbone (dropout off, BN fixed)."""
        self.model.train(mode != "linear_probe")


def prepare(base: Base, num_classes: int, mode: Mode, lr: float,
            backbone_lr_factor: float = 0.1) -> Prepared:
    """The model to train in ``mode`` and its optimizer's parameter groups."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {list(MODES)}")
    head = base.head_names(num_classes)
    model = base.build(num_classes)
    if mode != "scratch":
        assert base.weights is not None
        state = load_state(base.weights, base.sha256)
        own = model.state_dict()
        kept = {k: v for k, v in state.items() if k in own and k not in head
                and own[k].shape == v.shape}
        missing = [k for k in own if k not in head and k not in kept]
        if missing:
            raise ValueError(f"base {base.name}'s weights lack {missing[:3]}: not its architecture")
        model.load_state_dict(kept, strict=False)
    head_params = [p for n, p in model.named_parameters() if n in head]
    body_params = [p for n, p in model.named_parameters() if n not in head]
    groups: list[dict[str, Any]] = [{"params": head_params, "lr": lr}]
    if mode == "linear_probe":
        for p in body_params:
            p.requires_grad_(False)
    else:
        factor = 1.0 if mode == "scratch" else backbone_lr_factor
        groups.append({"params": body_params, "lr": lr * factor})
    return Prepared(model, {n for n, _ in model.named_parameters() if n in head}, groups)
