"""VGG (Simonyan and Zisserman, 2014), sized for small inputs.

What made it matter, kept here: only 3x3 convolutions (two stacked 3x3 see what one 5x5
sees, with 18 instead of 25 weights per channel pair, and an extra ReLU between), stacked
in five stages separated by 2x2 max-pooling, the depth chosen from the paper's patterns
(VGG-11, 13, 16, 19), and a classifier of fully connected layers with dropout. Batch norm
after each convolution is optional (``norm = "batch"``, as torchvision's ``vgg*_bn``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.registry import register_model

# Convolutions per stage for each depth (the paper's configurations A, B, D and E); each
# stage ends in a 2x2 max-pool.
STAGES = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}


@dataclass(frozen=True)
class VGGConfig:
    in_channels: int = 3  # RGB
    num_classes: int = 1000  # output classes
    image_size: int = 64  # input side; five poolings divide it by 32
    depth: int = 11  # weight layers: 11, 13, 16 or 19 (the paper's A, B, D, E)
    widths: tuple[int, ...] = (
        16,
        32,
        64,
        128,
        128,
    )  # channels of the five stages (64..512 in the paper)
    hidden: int = 256  # width of the two hidden fully connected layers (4096 in the paper)
    dropout: float = 0.5  # dropout before each hidden fully connected layer's output
    norm: str = "batch"  # after each convolution: "batch" or "none" (the paper)


class VGG(nn.Module):
    def __init__(self, config: VGGConfig) -> None:
        super().__init__()
        if config.depth not in STAGES:
            raise ValueError(f"unknown VGG depth {config.depth}; known: {sorted(STAGES)}")
        if len(config.widths) != 5:
            raise ValueError(f"VGG has five stages, got {len(config.widths)} widths")
        if config.norm not in ("batch", "none"):
            raise ValueError(f"unknown norm {config.norm!r}; use 'batch' or 'none'")
        if config.image_size % 32 != 0:
            raise ValueError(
                f"image_size must be a multiple of 32 (five 2x poolings), got {config.image_size}"
            )
        self.config = config
        layers: list[nn.Module] = []
        channels = config.in_channels
        for convs, width in zip(STAGES[config.depth], config.widths, strict=True):
            for _ in range(convs):
                layers.append(nn.Conv2d(channels, width, 3, padding=1, bias=config.norm == "none"))
                if config.norm == "batch":
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=True))
                channels = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = config.image_size // 32
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * side * side, config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            raise ValueError(f"this VGG takes {size}x{size} inputs, got {tuple(x.shape[-2:])}")
        # 1. five stages of 3x3 convolutions: (B, C, 64, 64) -> (B, widths[-1], 2, 2)
        h = self.features(x)
        # 2. classifier: (B, widths[-1] * 2 * 2) -> (B, num_classes)
        return self.classifier(h)


@register_model("vgg")
def vgg(**config: object) -> VGG:
    if isinstance(config.get("widths"), list):
        config["widths"] = tuple(config["widths"])  # type: ignore[arg-type]
    return VGG(VGGConfig(**config))  # type: ignore[arg-type]
