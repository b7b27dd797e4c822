"""LeNet-5 (LeCun et al., 1998): C1-S2-C3-S4-C5-F6 on 32x32 inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.registry import register_model


@dataclass(frozen=True)
class LeNet5Config:
    in_channels: int = 1  # grayscale digits
    num_classes: int = 10  # output classes
    activation: str = "tanh"  # "tanh" as in the paper, or "relu"
    pooling: str = "avg"  # subsampling layers: "avg" (paper) or "max"


class LeNet5(nn.Module):
    def __init__(self, config: LeNet5Config) -> None:
        super().__init__()
        if config.activation not in ("tanh", "relu"):
            raise ValueError(f"unknown activation {config.activation!r}")
        if config.pooling not in ("avg", "max"):
            raise ValueError(f"unknown pooling {config.pooling!r}")
        self.config = config
        act = nn.Tanh if config.activation == "tanh" else nn.ReLU
        pool = nn.AvgPool2d if config.pooling == "avg" else nn.MaxPool2d
        self.features = nn.Sequential(
            nn.Conv2d(config.in_channels, 6, 5), act(),  # C1: (6, 28, 28)
            pool(2),  # S2: (6, 14, 14)
            nn.Conv2d(6, 16, 5), act(),  # C3: (16, 10, 10)
            pool(2),  # S4: (16, 5, 5)
            nn.Conv2d(16, 120, 5), act(),  # C5: (120, 1, 1)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(120, 84), act(), nn.Linear(84, config.num_classes))

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """F6 features (B, 84), used by the sampler benchmark's Fréchet distance."""
        return self.head[:3](self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, 32, 32) -> (B, num_classes) logits
        if x.shape[-2:] != (32, 32):
            raise ValueError(f"LeNet-5 takes 32x32 inputs, got {tuple(x.shape[-2:])}")
        return self.head(self.features(x))


@register_model("lenet5")
def lenet5(**config: object) -> LeNet5:
    return LeNet5(LeNet5Config(**config))  # type: ignore[arg-type]
