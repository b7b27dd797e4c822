"""A procedural shapes dataset in the manner of dSprites: deterministic by seed, unlimited size.

Images are 64x64 RGB floats in [0, 1]. Shapes are rasterised without anti-aliasing by a
vectorised point-in-shape test in polar coordinates (every shape here is star-shaped about
its centre, so "inside" is ``radius <= boundary(angle)``).

- ``make_classification(n, seed)``: one shape per image (circle, square, triangle, star),
  any fill colour, spanning 20-80 % of the image side, any rotation and position (partly
  clipped shapes allowed), on a plain, noisy or gradient background of any colour. The
  fill colour always keeps a clear distance from every background colour.
- ``make_scenes(n, seed)``: 1-4 possibly overlapping shapes and a per-pixel class mask
  (0 background, 1 circle, 2 square, 3 triangle, 4 star); later shapes occlude earlier ones.

``SEEDS`` names the seed of each split. Trainers draw fresh data from ``SEEDS["train"] + i``
(``i`` below ``TRAIN_STREAMS``); the validation and test seeds lie outside that range and
are never used in training.
"""

from __future__ import annotations

import numpy as np
import torch

SHAPE_LABELS = ["circle", "square", "triangle", "star"]
SIZE = 64
SEEDS = {"train": 0, "val": 1_000_003, "test": 2_000_029}
TRAIN_STREAMS = 1_000_000  # seeds SEEDS["train"] + i for i below this are training data

_CHUNK = 512  # samples rasterised at once (bounds the (chunk, 64, 64) temporaries)
_STAR_INNER = 0.45  # star's inner radius as a fraction of its outer radius
_MIN_CONTRAST = 0.4  # least RGB distance between a fill colour and any background colour
_SALT = {"classification": 11, "scenes": 23}  # separate streams per sample kind


def _grid() -> tuple[np.ndarray, np.ndarray]:
    # Pixel centres, (64, 64) each.
    c = np.arange(SIZE, dtype=np.float32) + 0.5
    return np.meshgrid(c, c, indexing="xy")


_X, _Y = _grid()


def _unit_width(shape: np.ndarray) -> np.ndarray:
    """Width of each shape class with outer radius 1, unrotated (to size it by its span)."""
    widths = np.array(
        [2.0, np.sqrt(2.0), np.sqrt(3.0), 2.0 * np.sin(2 * np.pi / 5)], dtype=np.float32
    )
    return widths[shape]


def _boundary(cls: int, theta: np.ndarray) -> np.ndarray:
    """Boundary radius (outer radius 1) of shape class ``cls`` at angles ``theta``.

    Classes: 0 circle, 1 square, 2 triangle, 3 star.
    """
    if cls == 0:
        return np.ones_like(theta)
    if cls in (1, 2):  # regular polygon: apothem / cos(angle off the nearest edge normal)
        sides = 4 if cls == 1 else 3
        sector = 2 * np.pi / sides
        off = np.mod(theta, sector) - sector / 2
        return np.float32(np.cos(np.pi / sides)) / np.cos(off)
    # Star: ten alternating outer/inner vertices. By symmetry, take the edge from the outer
    # vertex at angle 0 (radius 1) to the inner one at angle pi/5 (radius _STAR_INNER) and
    # intersect the ray at angle phi with it: t = (p1 x d) / (u x d).
    sector = np.pi / 5
    phi = np.mod(theta, 2 * sector)
    phi = np.where(phi > sector, 2 * sector - phi, phi)  # fold to [0, pi/5]
    dx = _STAR_INNER * float(np.cos(sector)) - 1.0
    dy = _STAR_INNER * float(np.sin(sector))
    return dy / (np.cos(phi) * dy - np.sin(phi) * dx)


def _inside(
    shape: np.ndarray, cx: np.ndarray, cy: np.ndarray, radius: np.ndarray, angle: np.ndarray
) -> np.ndarray:
    """(B, 64, 64) boolean masks of B shapes with per-shape parameters of shape (B,)."""
    dx = _X[None] - cx[:, None, None]
    dy = _Y[None] - cy[:, None, None]
    rho = np.sqrt(dx * dx + dy * dy) / radius[:, None, None]
    theta = np.arctan2(dy, dx) - angle[:, None, None]
    inside = np.empty(rho.shape, dtype=bool)
    for cls in range(len(SHAPE_LABELS)):
        idx = np.flatnonzero(shape == cls)
        inside[idx] = rho[idx] <= _boundary(cls, theta[idx])
    return inside


def _backgrounds(rng: np.random.Generator, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, 3, 64, 64) backgrounds and the two end colours (B, 3) of each.

    Kinds drawn evenly: plain (both ends equal), noisy (plain plus Gaussian noise) and a
    linear gradient between two colours in any direction.
    """
    kind = rng.integers(0, 3, size=b)
    c1 = rng.random((b, 3), dtype=np.float32)
    c2 = np.where((kind == 2)[:, None], rng.random((b, 3), dtype=np.float32), c1)
    direction = (rng.random(b) * 2 * np.pi).astype(np.float32)
    cos, sin = np.cos(direction)[:, None, None], np.sin(direction)[:, None, None]
    u = cos * (_X[None] - SIZE / 2) + sin * (_Y[None] - SIZE / 2)  # (B, 64, 64)
    u = (u * np.float32(1 / (SIZE * np.sqrt(2))) + np.float32(0.5)).clip(0, 1)[:, None]
    image = c1[..., None, None] + (c2 - c1)[..., None, None] * u  # (B, 3, 64, 64)
    noisy = np.flatnonzero(kind == 1)
    sigma = rng.uniform(0.03, 0.12, size=len(noisy)).astype(np.float32)
    noise = rng.standard_normal((len(noisy), 3, SIZE, SIZE), dtype=np.float32)
    image[noisy] += noise * sigma[:, None, None, None]
    return image, c1, c2


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from colours ``p`` (B, K, 3) to the segments a-b (B, 3) in RGB space."""
    d = (b - a)[:, None]
    t = ((p - a[:, None]) * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-8)
    closest = a[:, None] + t.clip(0, 1)[..., None] * d
    return np.linalg.norm(p - closest, axis=-1)


def _fill_colours(
    rng: np.random.Generator, a: np.ndarray, b: np.ndarray, avoid: list[np.ndarray] | None = None
) -> np.ndarray:
    """A colour per sample (B, 3) far enough from the background segment a-b (and ``avoid``).

    Draws 16 candidates each and keeps the first that contrasts; failing that, the one with
    the most contrast.
    """
    cand = rng.random((a.shape[0], 16, 3), dtype=np.float32)
    dist = _segment_distance(cand, a, b)
    for other in avoid or []:
        dist = np.minimum(dist, 2 * np.linalg.norm(cand - other[:, None], axis=-1))
    ok = dist >= _MIN_CONTRAST
    pick = np.where(ok.any(1), ok.argmax(1), dist.argmax(1))
    return cand[np.arange(a.shape[0]), pick]


def _placement(
    rng: np.random.Generator, shape: np.ndarray, lo: float, hi: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre x, y, outer radius and rotation for shapes spanning ``lo``-``hi`` of the side.

    The centre keeps at least 70 % of the outer radius inside the image, so a shape may be
    clipped but never mostly lost.
    """
    b = shape.shape[0]
    span = rng.uniform(lo, hi, size=b).astype(np.float32) * SIZE
    radius = span / _unit_width(shape)
    margin = np.minimum(0.7 * radius, SIZE / 2)
    cx = margin + rng.random(b, dtype=np.float32) * (SIZE - 2 * margin)
    cy = margin + rng.random(b, dtype=np.float32) * (SIZE - 2 * margin)
    angle = rng.random(b, dtype=np.float32) * 2 * np.pi
    return cx, cy, radius, angle


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    # (N, 3, 64, 64) float32, clipped to [0, 1] in place
    return torch.from_numpy(np.clip(images, 0, 1, out=images))


def _check(n: int) -> None:
    if n < 0:
        raise ValueError(f"sample count must be non-negative, got {n}")


def make_classification(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` one-shape images and their classes: x (n, 3, 64, 64) in [0, 1], y (n,) long.

    Classes are balanced (each appears ``n // 4`` or ``n // 4 + 1`` times), in random order.
    """
    _check(n)
    rng = np.random.default_rng([seed, _SALT["classification"]])
    y = rng.permutation(np.arange(n) % len(SHAPE_LABELS))
    out = np.empty((n, 3, SIZE, SIZE), dtype=np.float32)
    for i in range(0, n, _CHUNK):
        shape = y[i : i + _CHUNK]
        image, c1, c2 = _backgrounds(rng, len(shape))
        colour = _fill_colours(rng, c1, c2)
        inside = _inside(shape, *_placement(rng, shape, 0.2, 0.8))
        out[i : i + len(shape)] = np.where(inside[:, None], colour[..., None, None], image)
    return _to_tensor(out), torch.from_numpy(y.astype(np.int64))


def make_scenes(n: int, seed: int, max_shapes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` scenes of 1-``max_shapes`` shapes: x (n, 3, 64, 64), mask (n, 64, 64) long.

    Mask values: 0 background, 1 + index into ``SHAPE_LABELS`` for each shape pixel, the
    last-drawn shape winning where shapes overlap. Shapes span 15-50 % of the side; each
    fill colour contrasts with the background and differs from the earlier fills.
    """
    _check(n)
    if max_shapes < 1:
        raise ValueError(f"a scene needs at least one shape, got max_shapes={max_shapes}")
    rng = np.random.default_rng([seed, _SALT["scenes"]])
    out = np.empty((n, 3, SIZE, SIZE), dtype=np.float32)
    masks = np.zeros((n, SIZE, SIZE), dtype=np.int64)
    for i in range(0, n, _CHUNK):
        b = min(_CHUNK, n - i)
        image, c1, c2 = _backgrounds(rng, b)
        mask = np.zeros((b, SIZE, SIZE), dtype=np.int64)
        count = rng.integers(1, max_shapes + 1, size=b)
        fills: list[np.ndarray] = []
        for slot in range(max_shapes):
            shape = rng.integers(0, len(SHAPE_LABELS), size=b)
            colour = _fill_colours(rng, c1, c2, avoid=fills)
            fills.append(colour)
            placement = _placement(rng, shape, 0.15, 0.5)
            live = np.flatnonzero(slot < count)  # scenes that still draw a shape
            inside = np.zeros((b, SIZE, SIZE), dtype=bool)
            inside[live] = _inside(shape[live], *(p[live] for p in placement))
            image = np.where(inside[:, None], colour[..., None, None], image)
            mask = np.where(inside, shape[:, None, None] + 1, mask)
        out[i : i + b] = image
        masks[i : i + b] = mask
    return _to_tensor(out), torch.from_numpy(masks)
