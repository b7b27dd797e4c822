"""``shape_agreement``: whether the shipped shapes classifier still sees the input's shape
in a reconstruction."""

from __future__ import annotations

import pytest
import torch

from models.data.shapes import make_classification
from models.training.vae import SHAPES_JUDGE, shape_agreement


class Passthrough(torch.nn.Module):
    """A reconstructor that returns its input (encode gives (x, 0), decode gives x back)."""

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, torch.zeros_like(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


class Blank(Passthrough):
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(z)


@pytest.mark.skipif(not SHAPES_JUDGE.exists(), reason="resnet18-shapes is not trained")
def test_a_perfect_reconstruction_keeps_every_shape_a_blank_one_none() -> None:
    x, y = make_classification(40, seed=123)
    perfect = shape_agreement(Passthrough(), x, y)  # type: ignore[arg-type]
    blank = shape_agreement(Blank(), x, y)  # type: ignore[arg-type]
    assert perfect is not None and blank is not None
    assert perfect["reconstruction_class_kept"] == perfect["input_class_right"] >= 0.9
    assert blank["reconstruction_class_kept"] <= 0.5  # one class for every image


SHIPPED = SHAPES_JUDGE.with_name("vae-shapes.safetensors")


@pytest.mark.skipif(not SHAPES_JUDGE.exists(), reason="resnet18-shapes is not trained")
def test_the_shipped_vae_keeps_the_shape_of_held_out_shapes() -> None:
    from models.checkpoint import load_sidecar
    from models.training.vae import shipped_shape_agreement

    assert SHIPPED.stat().st_size < 8 * 1024 * 1024  # small enough to ship in the repository
    metrics = load_sidecar(SHIPPED)["metrics"]
    found = shipped_shape_agreement(2000)  # the trainer's held-out set: the sidecar's figure
    assert found is not None and found["reconstruction_class_kept"] == metrics["shape_kept"]
    assert metrics["shape_kept"] >= 0.95 and metrics["shapes"]["n_eval"] == 2000
