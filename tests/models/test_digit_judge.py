"""The figures that judge generated digits: Fréchet distance and conditional accuracy."""

from __future__ import annotations

import pytest
import torch

from models.evaluation.digit_judge import conditional_accuracy, frechet_distance


def test_frechet_distance_of_a_set_with_itself_is_zero() -> None:
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_shifted_and_scaled_gaussians() -> None:
    x = torch.randn(4000, 3, generator=torch.Generator().manual_seed(1))
    x = x - x.mean(0)  # centred, so that scaling leaves the mean alone
    shifted = x + torch.tensor([3.0, 0.0, 0.0])
    assert frechet_distance(x, shifted) == pytest.approx(9.0, rel=1e-3)
    # covariances S and 4S: tr(S) + tr(4S) - 2 tr((4 S^2)^(1/2)) = tr(S)
    trace = float(torch.cov(x.T.double()).trace())
    assert frechet_distance(x, 2 * x) == pytest.approx(trace, rel=1e-6)


def test_frechet_distance_needs_two_samples_per_set() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))


def test_conditional_accuracy_is_the_share_of_matches() -> None:
    assert conditional_accuracy(torch.tensor([1, 2, 3, 3]), torch.tensor([1, 2, 0, 3])) == 0.75
