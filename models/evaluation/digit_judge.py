"""Judging generated digits with the shipped ``lenet5-digits`` classifier.

Two figures, shared by the generative trainers and the sampler benchmark:

- conditional accuracy: the share of generated images that LeNet-5 assigns to the class
  they were generated for;
- a Fréchet distance between LeNet-5 penultimate (F6, 84-d) features of generated images
  and of the held-out real digits, in the manner of FID with a digit-sized network.

And one figure LeNet cannot give, since it reads a 7 buried in speckle as a 7: roughness,
the RMS of the 4-neighbour Laplacian of the 32x32 image in [0, 1]. A sample is "noisy"
when its roughness is above twice the largest roughness among the held-out real digits.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

from models.checkpoint import load_model
from models.data.digits import load_digits_split

JUDGE_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "lenet5-digits.safetensors"


def load_judge(weights: Path = JUDGE_WEIGHTS) -> torch.nn.Module:
    """The trained LeNet-5 (eval mode, CPU); it must have been trained first."""
    if not Path(weights).exists():
        raise FileNotFoundError(
            f"{Path(weights).name} is missing: train it first (convoy train lenet5-digits)"
        )
    model, _ = load_model(weights)
    return model


@torch.no_grad()
def judge(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class (N,), penultimate features (N, 84)) of images (N, 1, 32, 32) in [0, 1]."""
    if images.ndim != 4 or images.shape[1:] != (1, 32, 32):
        raise ValueError(f"the judge takes (N, 1, 32, 32) images, got {tuple(images.shape)}")
    images = images.float().clamp(0, 1)
    feats = model.penultimate(images)  # type: ignore[operator]
    logits = model.head[3](feats)  # type: ignore[index]
    return logits.argmax(-1), feats


def conditional_accuracy(predicted: torch.Tensor, requested: torch.Tensor) -> float:
    """Share of images classified as the class they were generated for."""
    return float((predicted == requested).float().mean())


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D)."""
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"need at least 2 samples per set, got {a.shape[0]} and {b.shape[0]}")
    x, y = a.double().numpy(), b.double().numpy()
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    with warnings.catch_warnings():  # a singular product is handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # near-singular product: nudge both diagonals
        eps = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def real_test_features(model: torch.nn.Module) -> torch.Tensor:
    """Penultimate features of the held-out digits (the fixed test quarter)."""
    _, _, x_test, _ = load_digits_split(32)
    return judge(model, x_test)[1]


LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def roughness(images: torch.Tensor) -> torch.Tensor:
    """Per image (N,): RMS of the 4-neighbour Laplacian over the interior of (N, 1, H, W) in [0, 1]."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"roughness takes (N, 1, H, W) images, got {tuple(images.shape)}")
    lap = F.conv2d(images.float().clamp(0, 1), LAPLACIAN)  # (N, 1, H - 2, W - 2)
    return lap.pow(2).mean(dim=(1, 2, 3)).sqrt()


def real_roughness() -> torch.Tensor:
    """Roughness of every held-out real digit (32x32, drawn as the trainers draw them)."""
    _, _, x_test, _ = load_digits_split(32)
    return roughness(x_test)


def noise_figures(images: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    """Share of images rougher than twice the roughest real digit, and median against real median."""
    r = roughness(images)
    limit = 2 * float(real.max())
    return {
        "noisy_share": round(float((r > limit).float().mean()), 4),
        "roughness_median_vs_real": round(float(r.median()) / float(real.median()), 3),
    }
