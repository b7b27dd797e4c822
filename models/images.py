"""Image helpers shared by predictors: PIL ↔ tensors, PNG artifacts, grids."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from models.predictor import Artifact


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Grayscale for 1 channel, RGB for 3; any other mode (RGBA, P, I;16) is converted."""
    if channels == 1:
        return image.convert("L")
    if channels == 3:
        return image.convert("RGB")
    raise ValueError(f"unsupported channel count {channels}")


def to_tensor(image: Image.Image, channels: int, height: int, width: int) -> torch.Tensor:
    """(C, H, W) float tensor in [0, 1], converted to the channel count and resized."""
    image = to_mode(image, channels)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def batch_tensor(
    images: list[Image.Image], channels: int, height: int, width: int
) -> torch.Tensor:
    """(B, C, H, W) from a list of PIL images."""
    return torch.stack([to_tensor(im, channels, height, width) for im in images])


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """A (C, H, W) or (H, W) tensor in [0, 1] as an 8-bit PIL image."""
    t = tensor.detach().float().clamp(0, 1).cpu()
    if t.ndim == 3 and t.shape[0] == 1:
        t = t[0]
    array = (t.numpy() * 255.0 + 0.5).astype(np.uint8)
    if array.ndim == 3:
        array = array.transpose(1, 2, 0)
    return Image.fromarray(array)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_artifact(name: str, image: Image.Image | torch.Tensor, **meta: object) -> Artifact:
    """A PNG artifact with width and height in its meta (plus e.g. ``seed``)."""
    if isinstance(image, torch.Tensor):
        image = to_pil(image)
    return Artifact(
        name=name,
        data=png_bytes(image),
        content_type="image/png",
        meta={"width": image.width, "height": image.height, **meta},
    )


def grid(tensors: torch.Tensor, nrow: int = 8, padding: int = 2) -> Image.Image:
    """A (B, C, H, W) batch in [0, 1] as one image grid."""
    from torchvision.utils import make_grid

    return to_pil(make_grid(tensors.detach().float().cpu(), nrow=nrow, padding=padding))


def normalization(sidecar: dict[str, object], channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the sidecar's ``normalize``, shaped (1, C, 1, 1); identity if absent."""
    norm: dict[str, list[float]] = sidecar.get("normalize") or {}  # type: ignore[assignment]
    mean = torch.tensor(norm.get("mean", [0.0] * channels)).view(1, channels, 1, 1)
    std = torch.tensor(norm.get("std", [1.0] * channels)).view(1, channels, 1, 1)
    return mean, std
