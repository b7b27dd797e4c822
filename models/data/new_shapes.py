"""Shapes the built-in shapes classifiers never saw, for transfer learning.

- ``make_new_shapes(n, seed)``: four new classes (ellipse, cross, crescent, hexagon), drawn
  as ``shapes.make_classification`` draws its own: one filled shape of any colour, 20-80 %
  of the side, any rotation and position, on a plain, noisy or gradient background.
- ``make_outlines(n, seed)``: the four known classes (circle, square, triangle, star) in a
  new rendering: outlines a fifth to a third of the radius thick instead of filled shapes.

Both are 64x64 RGB in [0, 1], balanced, deterministic by seed, from streams of their own.
"""

from __future__ import annotations

import numpy as np
import torch

from models.data.shapes import (
    _X,
    _Y,
    SHAPE_LABELS,
    SIZE,
    _backgrounds,
    _fill_colours,
    _inside,
    _placement,
    _to_tensor,
)

NEW_SHAPE_LABELS = ["ellipse", "cross", "crescent", "hexagon"]
_SALT = {"new": 31, "outline": 37}
_CHUNK = 512


def _new_inside(rng: np.random.Generator, shape: np.ndarray) -> np.ndarray:
    """(B, 64, 64) masks of the new classes, each about 20-80 % of the side across."""
    b = shape.shape[0]
    radius = rng.uniform(0.1, 0.4, size=b).astype(np.float32) * SIZE
    margin = np.minimum(0.7 * radius, SIZE / 2)
    cx = margin + rng.random(b, dtype=np.float32) * (SIZE - 2 * margin)
    cy = margin + rng.random(b, dtype=np.float32) * (SIZE - 2 * margin)
    angle = rng.random(b, dtype=np.float32) * 2 * np.pi
    aspect = rng.uniform(0.4, 0.6, size=b).astype(np.float32)  # ellipse minor/major
    dx = _X[None] - cx[:, None, None]
    dy = _Y[None] - cy[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = (cos * dx + sin * dy) / radius[:, None, None]  # rotated, in radii
    v = (-sin * dx + cos * dy) / radius[:, None, None]
    ellipse = u * u + (v / aspect[:, None, None]) ** 2 <= 1
    arm = 0.32
    cross = ((np.abs(u) <= 1) & (np.abs(v) <= arm)) | ((np.abs(v) <= 1) & (np.abs(u) <= arm))
    crescent = (u * u + v * v <= 1) & ((u - 0.5) ** 2 + v * v > 0.8**2)
    theta = np.mod(np.arctan2(v, u), np.pi / 3) - np.pi / 6
    hexagon = np.sqrt(u * u + v * v) * np.cos(theta) <= np.cos(np.pi / 6)
    masks = np.stack([ellipse, cross, crescent, hexagon])  # (4, B, 64, 64)
    return masks[shape, np.arange(b)]


def _draw(n: int, seed: int, salt: int, labels: list[str],
          inside: object) -> tuple[torch.Tensor, torch.Tensor]:
    if n < 0:
        raise ValueError(f"sample count must be non-negative, got {n}")
    rng = np.random.default_rng([seed, salt])
    y = rng.permutation(np.arange(n) % len(labels))
    out = np.empty((n, 3, SIZE, SIZE), dtype=np.float32)
    for i in range(0, n, _CHUNK):
        shape = y[i : i + _CHUNK]
        image, c1, c2 = _backgrounds(rng, len(shape))
        colour = _fill_colours(rng, c1, c2)
        mask = inside(rng, shape)  # type: ignore[operator]
        out[i : i + len(shape)] = np.where(mask[:, None], colour[..., None, None], image)
    return _to_tensor(out), torch.from_numpy(y.astype(np.int64))


def make_new_shapes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of the new classes: x (n, 3, 64, 64) in [0, 1], y (n,) long."""
    return _draw(n, seed, _SALT["new"], NEW_SHAPE_LABELS, _new_inside)


def _outline_inside(rng: np.random.Generator, shape: np.ndarray) -> np.ndarray:
    cx, cy, radius, angle = _placement(rng, shape, 0.3, 0.8)
    inner = rng.uniform(0.65, 0.8, size=shape.shape[0]).astype(np.float32)
    return _inside(shape, cx, cy, radius, angle) & ~_inside(shape, cx, cy, radius * inner, angle)


def make_outlines(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` outlined shapes of ``SHAPE_LABELS``: x (n, 3, 64, 64) in [0, 1], y (n,) long."""
    return _draw(n, seed, _SALT["outline"], SHAPE_LABELS, _outline_inside)
