"""U-Net (Ronneberger, Fischer & Brox, 2015) for per-pixel classification.

A contracting path of double 3x3 convolution blocks, each followed by 2x2 max-pooling that
halves the side and (in the next block) doubles the width; a bottleneck block; an expanding
path in which a 2x2 up-convolution doubles the side and halves the width, the encoder's
features of the same scale are concatenated (the skip connection), and a double 3x3 block
fuses them; a 1x1 convolution maps to class logits. Convolutions use same padding (the
paper's were unpadded, with cropping), so the mask is exactly the input's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from models.registry import register_model


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 3  # image channels
    num_classes: int = 5  # output classes, background included
    base_width: int = 16  # channels of the first block; doubled at each level down
    depth: int = 3  # number of 2x2 poolings (and of up-convolutions)
    norm: Literal["batch", "none"] = "batch"  # after each 3x3 conv ("none" as in the paper)
    dropout: float = 0.0  # dropout at the bottleneck, as the paper's end of contracting path


class DoubleConv(nn.Module):
    """(3x3 conv, norm, ReLU) twice, same padding: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, c_in: int, c_out: int, norm: str) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c in (c_in, c_out):
            layers.append(nn.Conv2d(c, c_out, 3, padding=1, bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU(inplace=True))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Up(nn.Module):
    """Up-convolution to half the width, concatenate the skip, fuse with a double conv."""

    def __init__(self, c_in: int, c_out: int, norm: str) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * c_out, c_out, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # (B, C_out, 2H, 2W)
        return self.conv(torch.cat([skip, x], dim=1))  # (B, 2 C_out, 2H, 2W) -> (B, C_out, 2H, 2W)


class UNet(nn.Module):
    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        if config.depth < 1:
            raise ValueError(f"depth must be at least 1, got {config.depth}")
        if config.base_width < 1:
            raise ValueError(f"base_width must be positive, got {config.base_width}")
        if config.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {config.num_classes}")
        if config.norm not in ("batch", "none"):
            raise ValueError(f"unknown norm {config.norm!r}; use 'batch' or 'none'")
        if not 0.0 <= config.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {config.dropout}")
        self.config = config
        widths = [config.base_width * 2**i for i in range(config.depth + 1)]
        self.down = nn.ModuleList()
        c_in = config.in_channels
        for w in widths[:-1]:
            self.down.append(DoubleConv(c_in, w, config.norm))
            c_in = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1], config.norm)
        self.dropout = nn.Dropout2d(config.dropout) if config.dropout else nn.Identity()
        self.up = nn.ModuleList(
            Up(widths[i + 1], widths[i], config.norm) for i in reversed(range(config.depth))
        )
        self.head = nn.Conv2d(widths[0], config.num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> logits (B, num_classes, H, W); H, W divisible by 2^depth."""
        factor = 2**self.config.depth
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected input (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(
                f"input side {tuple(x.shape[-2:])} is not divisible by 2^depth = {factor}"
            )
        # 1. contracting path: keep each level's features for the skips
        skips: list[torch.Tensor] = []
        for block in self.down:
            x = block(x)  # (B, w_i, H / 2^i, W / 2^i)
            skips.append(x)
            x = self.pool(x)  # (B, w_i, H / 2^(i+1), W / 2^(i+1))
        # 2. bottleneck
        x = self.dropout(self.bottleneck(x))  # (B, w_depth, H / 2^depth, W / 2^depth)
        # 3. expanding path: up-convolve, concatenate the skip of the same scale, fuse
        for up, skip in zip(self.up, reversed(skips), strict=True):
            x = up(x, skip)  # (B, w_i, H / 2^i, W / 2^i)
        # 4. 1x1 head
        return self.head(x)  # (B, num_classes, H, W)


@register_model("unet")
def unet(**config: object) -> UNet:
    return UNet(UNetConfig(**config))  # type: ignore[arg-type]
