"""The procedural shapes dataset: deterministic by seed, right shapes and dtypes, honest masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.data.shapes import SEEDS, SHAPE_LABELS, TRAIN_STREAMS, make_classification, make_scenes


def test_labels_and_seeds() -> None:
    assert SHAPE_LABELS == ["circle", "square", "triangle", "star"]
    assert set(SEEDS) == {"train", "val", "test"}
    # Held-out seeds lie outside the range of training streams.
    for split in ("val", "test"):
        assert not SEEDS["train"] <= SEEDS[split] < SEEDS["train"] + TRAIN_STREAMS


def test_classification_is_deterministic_by_seed() -> None:
    x1, y1 = make_classification(40, seed=7)
    x2, y2 = make_classification(40, seed=7)
    x3, _ = make_classification(40, seed=8)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)


def test_classification_shapes_dtypes_and_balance() -> None:
    x, y = make_classification(41, seed=1)
    assert x.shape == (41, 3, 64, 64) and x.dtype == torch.float32
    assert y.shape == (41,) and y.dtype == torch.long
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    counts = torch.bincount(y, minlength=4)
    assert int(counts.max() - counts.min()) <= 1


def test_fill_colours_contrast_with_background() -> None:
    from models.data.shapes import _MIN_CONTRAST, _fill_colours, _segment_distance

    rng = np.random.default_rng(0)
    a = rng.random((500, 3), dtype=np.float32)
    b = np.where(rng.random((500, 1)) < 0.5, a, rng.random((500, 3), dtype=np.float32))
    fill = _fill_colours(rng, a, b)
    dist = _segment_distance(fill[:, None], a, b)[:, 0]
    assert float(np.quantile(dist, 0.99)) >= _MIN_CONTRAST * 0.99  # nearly all contrast
    assert float(dist.mean()) > _MIN_CONTRAST


def test_each_image_holds_a_flat_filled_shape() -> None:
    # The fill is one exact colour; the smallest shape (a star spanning 20 % of the side,
    # at most 30 % of its radius clipped) still covers well over 20 pixels.
    x, _ = make_classification(32, seed=9)
    for img in x:
        pixels = img.permute(1, 2, 0).reshape(-1, 3)
        _, counts = pixels.unique(dim=0, return_counts=True)
        assert int(counts.max()) >= 20


def test_scenes_deterministic_and_mask_consistent() -> None:
    x, mask = make_scenes(24, seed=5)
    x2, mask2 = make_scenes(24, seed=5)
    assert torch.equal(x, x2) and torch.equal(mask, mask2)
    assert x.shape == (24, 3, 64, 64) and mask.shape == (24, 64, 64) and mask.dtype == torch.long
    assert set(mask.unique().tolist()) <= {0, 1, 2, 3, 4}
    assert all(int((m > 0).sum()) > 0 for m in mask)  # every scene has a shape
    for img, m in zip(x, mask, strict=True):
        pixels = img.permute(1, 2, 0).reshape(-1, 3).numpy()
        flat = m.reshape(-1).numpy()
        for cls in np.unique(flat[flat > 0]):
            # Each shape is one flat colour; pixels of a class take few distinct colours
            # (one per shape of that class), unlike the background which may be noisy.
            colours = np.unique(pixels[flat == cls].round(5), axis=0)
            assert len(colours) <= 4


def test_negative_count_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        make_classification(-1, seed=0)
