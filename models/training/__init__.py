"""Trainers for the built-in models (``convoy train NAME``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models.registry import get_trainer

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def train(name: str, out_dir: Path | None = None, *, seed: int = 0, quick: bool = False,
          threads: int | None = None) -> dict[str, Any]:
    """Train the built-in model ``name`` and write its weights and sidecar to ``out_dir``."""
    if threads:
        torch.set_num_threads(threads)
    result: dict[str, Any] = get_trainer(name)(out_dir or WEIGHTS_DIR, seed=seed, quick=quick)
    return result
