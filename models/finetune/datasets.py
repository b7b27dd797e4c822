"""Datasets of a transfer: built-in procedural sets by name, or a checked archive.

Every set is a list of PIL images and class indices, so that training reads them exactly
as serving will (the base model's own resize, channels and normalisation). The built-in
sets need no download; each has a small training draw (``per_class`` images of every
class, chosen by seed) and a large held-out set that the training draw never touches:

- ``shapes-new``: ellipse, cross, crescent, hexagon (classes the shapes models never saw);
- ``shapes-outline``: circle, square, triangle, star drawn as outlines (a new rendering);
- ``digits-5-9``: scikit-learn's digits 5 to 9 (held out: every 5-9 not drawn);
- ``digits-0-4``: digits 0 to 4, every training-split image (to pretrain a base that has
  never seen 5-9; held out: the test split's 0-4).

Importing this module does not import torch (the API lists the names).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from models.finetune.archive import ArchiveLimits, images, inspect

if TYPE_CHECKING:
    import torch
    from PIL import Image

BUILTIN = {
    "shapes-new": "ellipse, cross, crescent, hexagon: shapes the shapes models never saw",
    "shapes-outline": "circle, square, triangle, star drawn as outlines instead of filled",
    "digits-5-9": "scikit-learn's handwritten digits 5 to 9",
    "digits-0-4": "scikit-learn's handwritten digits 0 to 4 (the training split, whole)",
}
MAX_PER_CLASS = 500
HELD_OUT = 2000  # images of a shapes held-out set
_TRAIN_SEED, _TEST_SEED = 7_000_001, 8_000_017  # outside the built-in trainers' seeds


@dataclass
class Dataset:
    labels: list[str]
    images: list[Image.Image]
    targets: list[int]
    sha256: str  # of the archive's bytes, or of the built-in set's name and draw
    source: str  # "upload <id>" or "builtin <name>"

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(self.labels, 0)
        for t in self.targets:
            out[self.labels[t]] += 1
        return out


def from_archive(data: bytes, source: str, limits: ArchiveLimits | None = None) -> Dataset:
    """A dataset from archive bytes, checked (``InvalidArchive`` names a bad member)."""
    limits = limits or ArchiveLimits()
    file: IO[bytes] = io.BytesIO(data)
    listing = inspect(file, limits)
    pairs = list(images(file, listing, limits))
    return Dataset(listing.labels, [p[0] for p in pairs], [p[1] for p in pairs],
                   hashlib.sha256(data).hexdigest(), source)


def _pil(x: torch.Tensor) -> list[Image.Image]:
    from models.images import to_pil

    return [to_pil(t) for t in x]


def _shapes(name: str, n: int, seed: int) -> tuple[list[str], Any, Any]:
    from models.data import new_shapes

    if name == "shapes-new":
        x, y = new_shapes.make_new_shapes(n, seed)
        return new_shapes.NEW_SHAPE_LABELS, x, y
    x, y = new_shapes.make_outlines(n, seed)
    return list(new_shapes.SHAPE_LABELS), x, y


def _digits(name: str, per_class: int | None, seed: int, held_out: bool
            ) -> tuple[list[str], Any, Any]:
    """Digits of the set's classes: a draw of ``per_class`` each from the training split,
    or the held-out rest (the test split and every training image not drawn)."""
    import torch

    from models.data.digits import load_digits_split

    classes = list(range(5, 10)) if name == "digits-5-9" else list(range(5))
    x_train, y_train, x_test, y_test = load_digits_split(32)
    gen = torch.Generator().manual_seed(_TRAIN_SEED + seed)
    drawn, rest = [], []
    for c in classes:
        idx = torch.nonzero(y_train == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = len(idx) if per_class is None else min(per_class, len(idx))
        drawn.append(idx[:k])
        rest.append(idx[k:])
    remap = torch.full((10,), -1, dtype=torch.long)
    remap[classes] = torch.arange(len(classes))
    labels = [str(c) for c in classes]
    if held_out:
        keep = torch.isin(y_test, torch.tensor(classes))
        x = torch.cat([x_test[keep], x_train[torch.cat(rest)]])
        y = torch.cat([y_test[keep], y_train[torch.cat(rest)]])
    else:
        order = torch.cat(drawn)
        x, y = x_train[order], y_train[order]
    return labels, x, remap[y]


def builtin(name: str, per_class: int | None = 20, seed: int = 0) -> Dataset:
    """The training draw of a built-in set: ``per_class`` images of every class (digits:
    None takes the whole training split)."""
    if name not in BUILTIN:
        raise ValueError(f"unknown built-in dataset {name!r}; known: {sorted(BUILTIN)}")
    if per_class is not None and not 1 <= per_class <= MAX_PER_CLASS:
        raise ValueError(f"per_class must be within 1..{MAX_PER_CLASS}, got {per_class}")
    if name.startswith("digits"):
        labels, x, y = _digits(name, per_class, seed, held_out=False)
    else:
        labels, x, y = _shapes(name, (per_class or 20) * 4, _TRAIN_SEED + seed)
    digest = hashlib.sha256(f"{name}|{per_class}|{seed}".encode()).hexdigest()
    return Dataset(labels, _pil(x), [int(v) for v in y], digest, f"builtin {name}")


def held_out(name: str, per_class: int | None = 20, seed: int = 0) -> tuple[list[str], Any, Any]:
    """(labels, x, y) of the set's held-out images as tensors in [0, 1], disjoint from
    ``builtin(name, per_class, seed)``."""
    if name.startswith("digits"):
        return _digits(name, per_class, seed, held_out=True)
    return _shapes(name, HELD_OUT, _TEST_SEED)
