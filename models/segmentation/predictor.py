"""The ``segment`` predictor: a U-Net's class mask, a colour overlay and per-class areas."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from models.checkpoint import load_model
from models.images import batch_tensor, normalization, png_artifact
from models.kinds.segment import SegmentArgs
from models.predictor import Predictor, Request, StepCallback
from models.registry import register_predictor

# Overlay colours by class index; background (0) is left uncoloured.
PALETTE = [
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25),
    (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230), (128, 128, 0),
]
OVERLAY_ALPHA = 0.5


def colour_of(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)] if index else PALETTE[0]


def overlay(image: Image.Image, mask: np.ndarray, alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """The RGB image with each non-background pixel blended towards its class colour."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    colours = np.array([colour_of(i) for i in range(int(mask.max()) + 1)], dtype=np.float32)
    tint = colours[mask]  # (H, W, 3)
    blend = np.where((mask > 0)[..., None], (1 - alpha) * base + alpha * tint, base)
    return Image.fromarray(np.clip(blend + 0.5, 0, 255).astype(np.uint8))


def bounded_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` (width, height) scaled down, aspect kept, so neither side is over ``max_side``."""
    width, height = size
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def class_areas(mask: np.ndarray, labels: list[str], num_classes: int) -> list[dict[str, Any]]:
    """Pixel count, fraction and overlay colour (``#rrggbb``) of every class, background
    included, by index."""
    counts = np.bincount(mask.ravel(), minlength=num_classes)
    total = int(mask.size)
    return [
        {"label": labels[i] if i < len(labels) else str(i), "index": i,
         "pixels": int(counts[i]), "fraction": float(counts[i]) / total,
         "colour": "#{:02x}{:02x}{:02x}".format(*colour_of(i))}
        for i in range(num_classes)
    ]


@register_predictor("unet")
class SegmentationPredictor(Predictor):
    kinds = ("segment",)

    def load(self) -> None:
        assert self.entry.weights is not None, f"{self.entry.name} has no weights"
        self.model, sidecar = load_model(self.entry.weights, self.entry.sha256, self.device)
        self.num_classes = int(sidecar["config"]["num_classes"])
        mean, std = normalization(sidecar, self.entry.input.channels)
        self.mean, self.std = mean.to(self.device), std.to(self.device)

    def modules_for_memory(self) -> list[torch.nn.Module]:
        return [self.model]

    @torch.inference_mode()
    def predict(
        self, batch: list[Request[SegmentArgs]], on_step: StepCallback | None = None
    ) -> list[dict[str, Any] | None]:
        spec = self.entry.input
        images: list[Image.Image] = [r.input.image for r in batch]
        # 1. one forward pass for the whole batch at the model's size: (B, C, h, w)
        x = batch_tensor(images, spec.channels, spec.height, spec.width).to(self.device)
        logits = self.model((x - self.mean) / self.std)  # (B, K, h, w)
        masks = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()  # (B, h, w)
        results: list[dict[str, Any] | None] = []
        for image, small in zip(images, masks, strict=True):
            # 2. mask back to the input's size, nearest-neighbour so indices stay classes; a
            #    large input gets its mask and overlay at most limits.max_side on a side
            size = bounded_size(image.size, self.entry.limits.max_side)
            if size != image.size:
                image = image.resize(size, Image.Resampling.BILINEAR)
            mask_image = Image.fromarray(small)
            if mask_image.size != size:
                mask_image = mask_image.resize(size, Image.Resampling.NEAREST)
            mask = np.asarray(mask_image)
            # 3. overlay on the input as sent, and per-class areas
            results.append({
                "mask": png_artifact("mask.png", mask_image),
                "overlay": png_artifact("overlay.png", overlay(image, mask)),
                "classes": class_areas(mask, self.entry.labels, self.num_classes),
                "input_size": {"height": spec.height, "width": spec.width},
            })
        return results
