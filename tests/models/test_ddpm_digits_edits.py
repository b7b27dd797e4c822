"""The shipped ``ddpm-digits`` finishes half-drawn held-out digits as their own class, and
turns a digit into another one by image-to-image, as ``lenet5-digits`` judges them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "weights"

pytestmark = pytest.mark.skipif(
    not all((WEIGHTS / f"{n}.safetensors").exists() for n in ("ddpm-digits", "lenet5-digits")),
    reason="ddpm-digits or lenet5-digits is not trained",
)


def test_half_masked_digits_are_inpainted_as_their_own_class() -> None:
    from models.benchmarks import digit_edits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        predictor = digit_edits.load_predictor()
        found = digit_edits.rows(predictor, limit=100, masks=("bottom",), strengths=(0.9,))
    finally:
        torch.set_num_threads(threads)
    inpaint, image = found
    assert inpaint["images"] == 100 and inpaint["recognised"] >= 0.9, inpaint
    assert inpaint["noisy_share"] <= 0.05, inpaint
    assert image["recognised"] >= 0.8, image  # a 3 becomes a 4 at strength 0.9
