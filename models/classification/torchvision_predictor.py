"""The ``classify`` predictor for torchvision architectures with the user's own weights.

A catalog entry names the architecture (``arch = "resnet50"``, ``"vgg16"``, ``"googlenet"``,
...), a local ``.safetensors`` state dict and its labels. The network is built with
``weights=None`` (nothing is downloaded), loaded only from safetensors, and fed with the
preprocessing torchvision's ImageNet weights for that architecture use: resize the short
side, centre-crop, scale to [0, 1], normalise with the ImageNet mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL import Image

from models.checkpoint import load_state
from models.classification.predictor import top_k_rows
from models.device import compute_dtype, prepare_module, to_device
from models.images import to_tensor
from models.kinds.classify import ClassifyArgs
from models.predictor import Predictor, Request, StepCallback
from models.registry import register_predictor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    resize: int  # the short side is resized to this (bilinear)
    crop: int  # then a centre crop of crop x crop
    mean: tuple[float, ...]  # per-channel mean subtracted
    std: tuple[float, ...]  # per-channel std divided by


def preprocess_for(arch: str, crop: int | None = None) -> Preprocess:
    """The inference transform of the architecture's default torchvision weights.

    Read from the weights enum's metadata (no download); architectures without registered
    weights fall back to the ImageNet standard: resize 256, crop 224. ``crop`` (the entry's
    input size) overrides the crop, keeping torchvision's resize-to-crop ratio.
    """
    import torchvision

    resize, size, mean, std = 256, 224, IMAGENET_MEAN, IMAGENET_STD
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT  # type: ignore[attr-defined]
        transform = weights.transforms()
        size = int(transform.crop_size[0])
        resize = int(transform.resize_size[0])
        mean, std = tuple(transform.mean), tuple(transform.std)
    except (ValueError, KeyError, AttributeError):
        pass
    if crop is not None and crop != size:
        resize, size = round(crop * resize / size), crop
    return Preprocess(resize=resize, crop=size, mean=mean, std=std)


def _resize_crop(image: Image.Image, p: Preprocess) -> torch.Tensor:
    """(3, crop, crop) in [0, 1]: short side to ``p.resize``, then a centre crop."""
    w, h = image.size
    scale = p.resize / min(w, h)
    nw, nh = max(round(w * scale), p.crop), max(round(h * scale), p.crop)
    x = to_tensor(image, 3, nh, nw)
    top, left = (nh - p.crop) // 2, (nw - p.crop) // 2
    return x[:, top : top + p.crop, left : left + p.crop]


def build(arch: str, num_classes: int) -> torch.nn.Module:
    """A torchvision architecture with random weights and ``num_classes`` outputs."""
    import torchvision

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown torchvision classification architecture {arch!r}")
    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if arch in ("googlenet", "inception_v3"):
        # Their auxiliary classifiers serve training only; init_weights=False skips a slow
        # scipy-based initialisation that the loaded weights replace anyway.
        kwargs.update(aux_logits=False, init_weights=False)
    model: torch.nn.Module = torchvision.models.get_model(arch, **kwargs)
    return model


@register_predictor("torchvision")
class TorchvisionPredictor(Predictor):
    kinds = ("classify",)

    def load(self) -> None:
        entry = self.entry
        if not entry.arch:
            raise ValueError(f"torchvision entry {entry.name} names no arch")
        if entry.weights is None:
            raise ValueError(f"torchvision entry {entry.name} names no weights file")
        if not entry.labels:
            raise ValueError(f"torchvision entry {entry.name} has no labels")
        state = load_state(entry.weights, entry.sha256)  # refuses anything but safetensors
        model = build(entry.arch, len(entry.labels))
        # googlenet / inception_v3 checkpoints may carry aux heads that serving drops.
        state = {
            k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2.", "AuxLogits."))
        }
        model.load_state_dict(state)
        self.dtype = compute_dtype(entry, self.device)
        spec = entry.input
        if spec.height != spec.width:
            raise ValueError(
                f"torchvision entry {entry.name} needs a square input, "
                f"got {spec.height}x{spec.width}"
            )
        # An entry that sets no input size gets the architecture's own crop.
        explicit = bool(spec.model_fields_set & {"height", "width"})
        self.pre = preprocess_for(entry.arch, spec.height if explicit else None)
        if "resize" in entry.config:  # e.g. 256 for resnet50's V1 weights (V2 uses 232)
            self.pre = replace(self.pre, resize=int(entry.config["resize"]))
            if self.pre.resize < self.pre.crop:
                raise ValueError(
                    f"resize {self.pre.resize} is smaller than the crop {self.pre.crop}"
                )
        self.model = prepare_module(model, entry, self.device,
                                    torch.zeros(2, 3, self.pre.crop, self.pre.crop))
        # inputs are normalised on the host, in float32, before they travel
        self.mean = torch.tensor(self.pre.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(self.pre.std).view(1, 3, 1, 1)

    def modules_for_memory(self) -> list[torch.nn.Module]:
        return [self.model]

    def preprocess(self, request: Request[ClassifyArgs]) -> None:
        request.pixels = _resize_crop(request.input.image, self.pre)

    @torch.inference_mode()
    def predict(
        self, batch: list[Request[ClassifyArgs]], on_step: StepCallback | None = None
    ) -> list[dict[str, Any] | None]:
        x = torch.stack([r.pixels if r.pixels is not None else _resize_crop(r.input.image, self.pre)
                         for r in batch])
        x = to_device((x - self.mean) / self.std, self.device, self.dtype)
        logits = self.model(x)  # (B, num_classes)
        ranked = top_k_rows(logits, self.entry.labels, [r.input.top_k for r in batch])
        size = {"height": self.pre.crop, "width": self.pre.crop}
        return [{"predictions": p, "input_size": dict(size)} for p in ranked]
