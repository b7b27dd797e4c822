"""ResNet (He, Zhang, Ren and Sun, 2015), sized for small inputs.

What made it matter, kept here: each block learns a residual F(x) added to a shortcut,
``relu(F(x) + shortcut(x))``, so depth stops hurting optimisation. The shortcut is the
identity where shapes match and a 1x1 projection (with batch norm) where a stage changes
the width or the stride (the paper's option B). Basic blocks (two 3x3 convolutions) for
ResNet-18/34, bottleneck blocks (1x1 reduce, 3x3, 1x1 expand by 4) for ResNet-50 and
deeper; batch norm after every convolution; a 7x7/2 stem with max-pool; global average
pooling before a single fully connected layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.registry import register_model


@dataclass(frozen=True)
class ResNetConfig:
    in_channels: int = 3  # RGB
    num_classes: int = 1000  # output classes
    block: str = "basic"  # "basic" (two 3x3) or "bottleneck" (1x1, 3x3, 1x1 x4)
    layers: tuple[int, ...] = (2, 2, 2, 2)  # blocks per stage: ResNet-18; (3, 4, 6, 3) is 34 or 50
    widths: tuple[int, ...] = (
        16,
        32,
        64,
        128,
    )  # stage widths before expansion (64..512 in the paper)
    stem_kernel: int = 7  # stem convolution kernel (stride 2), followed by a 3x3/2 max-pool
    zero_init_residual: bool = True  # last batch norm of each residual branch starts at zero


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; the residual branch of ResNet-18/34."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(cin, width, stride)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, cin, H, W) -> (B, width, H / stride, W / stride)
        return self.relu(self.residual(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride), 1x1 expand by 4; the branch of ResNet-50+."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(cin, cout, stride)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.relu(self.bn2(self.conv2(h)))
        return self.bn3(self.conv3(h))

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, cin, H, W) -> (B, 4 * width, H / stride, W / stride)
        return self.relu(self.residual(x) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    """Identity when the shapes match, else a strided 1x1 projection with batch norm."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


BLOCKS: dict[str, type[BasicBlock | Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        if config.block not in BLOCKS:
            raise ValueError(f"unknown block {config.block!r}; known: {sorted(BLOCKS)}")
        if len(config.layers) != len(config.widths):
            raise ValueError(
                "layers and widths name different stage counts: "
                f"{len(config.layers)} vs {len(config.widths)}"
            )
        if min(config.layers) < 1:
            raise ValueError(f"every stage needs at least one block, got layers={config.layers}")
        self.config = config
        block = BLOCKS[config.block]
        k = config.stem_kernel
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, config.widths[0], k, 2, k // 2, bias=False),
            nn.BatchNorm2d(config.widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, padding=1),
        )
        stages: list[nn.Module] = []
        channels = config.widths[0]
        for i, (count, width) in enumerate(zip(config.layers, config.widths, strict=True)):
            blocks = []
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1  # each later stage halves the size
                blocks.append(block(channels, width, stride))
                channels = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, config.num_classes)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if config.zero_init_residual:  # each block starts as its shortcut (Goyal et al., 2017)
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_norm().weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 1. stem: (B, C, 64, 64) -> (B, widths[0], 16, 16)
        h = self.stem(x)
        # 2. stages: 16x16 -> 8x8 -> 4x4 -> 2x2, (B, widths[-1] * expansion, 2, 2)
        h = self.stages(h)
        # 3. global average pool and logits: (B, num_classes)
        return self.head(h)


@register_model("resnet")
def resnet(**config: object) -> ResNet:
    for key in ("layers", "widths"):
        if isinstance(config.get(key), list):
            config[key] = tuple(config[key])  # type: ignore[arg-type, index]
    return ResNet(ResNetConfig(**config))  # type: ignore[arg-type]
