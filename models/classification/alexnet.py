"""AlexNet (Krizhevsky, Sutskever and Hinton, 2012), sized for small inputs.

What made it matter, kept here: a large first kernel with a stride, ReLU everywhere,
overlapping max-pooling (3x3 windows, stride 2), optional local response normalisation
after the first two convolutions, and a classifier of two wide fully connected layers with
dropout 0.5. Its training recipe (SGD with momentum 0.9, weight decay 5e-4, batch 128,
random crops and mirror flips, per-channel mean subtraction) lives in the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.registry import register_model


@dataclass(frozen=True)
class AlexNetConfig:
    in_channels: int = 3  # RGB
    num_classes: int = 1000  # output classes
    image_size: int = 64  # input side the classifier's first layer is sized for
    widths: tuple[int, ...] = (24, 64, 96, 96, 64)  # conv1..conv5 output channels
    first_kernel: int = 7  # conv1 kernel side (11 on 224x224 ImageNet crops)
    first_stride: int = 2  # conv1 stride (4 on ImageNet)
    hidden: int = 256  # width of the two fully connected layers (4096 in the paper)
    dropout: float = 0.5  # dropout before each fully connected layer
    norm: str = "lrn"  # after conv1 and conv2: "lrn" (local response norm, as the paper) or "none"


def _pool() -> nn.MaxPool2d:
    # Overlapping pooling: the window (3) is larger than the stride (2).
    return nn.MaxPool2d(kernel_size=3, stride=2)


class AlexNet(nn.Module):
    def __init__(self, config: AlexNetConfig) -> None:
        super().__init__()
        if len(config.widths) != 5:
            raise ValueError(f"AlexNet has five convolutions, got {len(config.widths)} widths")
        if config.norm not in ("lrn", "none"):
            raise ValueError(f"unknown norm {config.norm!r}; use 'lrn' or 'none'")
        if not 0.0 <= config.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {config.dropout}")
        self.config = config
        c1, c2, c3, c4, c5 = config.widths

        def norm() -> nn.Module:
            # The paper's constants: size 5, alpha 1e-4, beta 0.75, k 2.
            return (
                nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
                if config.norm == "lrn"
                else nn.Identity()
            )

        self.features = nn.Sequential(
            nn.Conv2d(
                config.in_channels,
                c1,
                config.first_kernel,
                config.first_stride,
                padding=config.first_kernel // 2,
            ),
            nn.ReLU(inplace=True),
            norm(),
            _pool(),
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.ReLU(inplace=True),
            norm(),
            _pool(),
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, 3, padding=1),
            nn.ReLU(inplace=True),
            _pool(),
        )
        side = self._feature_side(config)
        if side < 1:
            raise ValueError(
                f"image_size {config.image_size} is too small for AlexNet's three poolings"
            )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(c5 * side * side, config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(config.hidden, config.num_classes),
        )
        # He initialisation: without batch norm, PyTorch's default leaves deep ReLU stacks
        # with vanishing activations and SGD stalls at chance.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier[-1].weight, std=0.01)  # start near uniform scores

    @staticmethod
    def _feature_side(config: AlexNetConfig) -> int:
        k, s = config.first_kernel, config.first_stride
        side = (config.image_size + 2 * (k // 2) - k) // s + 1  # conv1
        for _ in range(3):  # three overlapping poolings (the convolutions keep the size)
            side = (side - 3) // 2 + 1
        return side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            raise ValueError(f"this AlexNet takes {size}x{size} inputs, got {tuple(x.shape[-2:])}")
        # 1. features: (B, C, 64, 64) -> (B, c5, 3, 3) for the default config
        h = self.features(x)
        # 2. classifier: (B, c5 * 3 * 3) -> (B, num_classes)
        return self.classifier(h)


@register_model("alexnet")
def alexnet(**config: object) -> AlexNet:
    if isinstance(config.get("widths"), list):
        config["widths"] = tuple(config["widths"])  # type: ignore[arg-type]
    return AlexNet(AlexNetConfig(**config))  # type: ignore[arg-type]
