"""scikit-learn's handwritten digits (8x8, 1797 images, bundled with the package: no download).

Upsampled to 32x32 in [0, 1], bright strokes on a dark ground as in the source data.
The split is fixed: ``train_test_split(test_size=0.25, random_state=0, stratify=y)``;
the held-out quarter is never used for training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LABELS = [str(i) for i in range(10)]


def load_digits_split(size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test); x is (N, 1, size, size) float in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(data.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        list(range(len(y))), test_size=0.25, random_state=0, stratify=data.target
    )
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def augment(x: torch.Tensor, generator: torch.Generator, max_shift: float = 0.1,
            max_rotate: float = 12.0, scale: tuple[float, float] = (0.85, 1.15)) -> torch.Tensor:
    """Random affine jitter (shift, rotation, scale) of a (B, C, H, W) batch."""
    b = x.shape[0]
    angle = (torch.rand(b, generator=generator) * 2 - 1) * max_rotate * torch.pi / 180
    s = scale[0] + torch.rand(b, generator=generator) * (scale[1] - scale[0])
    shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * max_shift * 2
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
