"""What every contender serves: torchvision's ResNet-18 with 4 classes (random weights from
a fixed seed, written as safetensors with a catalog entry that convoy serves), fed 64x64
PNG images as base64 in JSON, one image per request, answering the top-5 labels.

The peers load the model through convoy's own predictor and decode the image with convoy's
own request preparation, so that every contender runs the same model code on the same
tensors; what differs is only the serving around it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ENTRY = "peers-resnet18"
LABELS = ("circle", "square", "triangle", "star")
SIZE = 64  # pixels, square, RGB
MAX_BATCH = 32  # every contender's batching: up to 32 requests...
MAX_WAIT_S = 0.010  # ...or 10 ms after the first

CATALOG = f"""
[models.{ENTRY}]
family = "torchvision"
arch = "resnet18"
kinds = ["classify"]
description = "torchvision ResNet-18, 4 classes, random weights (convoy bench peers)"
weights = "resnet18.safetensors"
labels = {list(LABELS)!r}
input = {{ channels = 3, height = {SIZE}, width = {SIZE} }}
max_batch = {MAX_BATCH}
max_wait_ms = {MAX_WAIT_S * 1000:g}
trace = true
"""


def write_catalog(folder: Path) -> Path:
    """Write the weights and a catalog file naming them into ``folder``; return the file."""
    import torch
    from safetensors.torch import save_file

    from models.classification.torchvision_predictor import build

    torch.manual_seed(0)
    model = build("resnet18", len(LABELS))
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "resnet18.safetensors"))
    catalog = folder / "catalog.toml"
    catalog.write_text(CATALOG)
    return catalog


class Model:
    """The model as a peer's worker holds it: convoy's predictor on the CPU, loaded once,
    with the torch thread count of convoy's worker (on a machine shared with the load
    generator, torch's own default of one thread per core makes every forward wait for a
    busy core: the comparison would be of thread counts, not of serving)."""

    def __init__(self, catalog: Path) -> None:
        import torch

        from models.catalog import Catalog
        from workers.cache import ModelCache
        from workers.settings import Settings
        from workers.worker import cpu_threads

        torch.set_num_threads(cpu_threads(Settings()))
        self.entry = Catalog.load([catalog], builtin=False).get(ENTRY)
        self.predictor = ModelCache(torch.device("cpu")).get(self.entry)

    def classify(self, images: list[str]) -> list[Any]:
        """The answers for base64 PNGs, one per image, in order."""
        from bench.inprocess import requests_for

        requests = requests_for("classify", [{"image": b} for b in images], self.entry)
        return list(self.predictor.predict(requests))
