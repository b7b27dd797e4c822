"""GoogLeNet / Inception v1 (Szegedy et al., 2014), sized for small inputs.

What made it matter, kept here: Inception modules, four parallel branches concatenated on
channels: a 1x1 convolution, a 1x1 reduction before a 3x3, a 1x1 reduction before a 5x5,
and a 3x3 max-pool followed by a 1x1 projection. The reductions keep the wide modules
cheap. Nine modules (3a-3b, 4a-4e, 5a-5b) with the paper's channel counts divided by
``width_divisor``; two auxiliary classifiers (on 4a and 4d) whose losses are added with
weight 0.3 during training and which are not used at inference: in train mode ``forward``
returns ``(logits, aux1, aux2)``, in eval mode the logits alone. Batch norm after each
convolution is optional (the paper's network had none; torchvision's has it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.registry import register_model

AUX_WEIGHT = 0.3  # weight of each auxiliary classifier's loss in training

# The paper's Table 1: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) per module.
MODULES: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


@dataclass(frozen=True)
class GoogLeNetConfig:
    in_channels: int = 3  # RGB
    num_classes: int = 1000  # output classes
    width_divisor: int = 4  # the paper's channel counts are divided by this
    stem_width: int = 32  # stem convolutions' channels (64 then 192 in the paper)
    aux_logits: bool = True  # build the two auxiliary classifiers (used in training only)
    aux_hidden: int = 128  # auxiliary classifiers' hidden fully connected width (1024 in the paper)
    dropout: float = 0.4  # before the final classifier, as in the paper
    aux_dropout: float = 0.7  # inside the auxiliary classifiers, as in the paper
    norm: str = "batch"  # after each convolution: "batch" or "none" (the paper)


class ConvBlock(nn.Sequential):
    """Convolution, optional batch norm, ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, norm: str, stride: int = 1) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=norm == "none")
        ]
        if norm == "batch":
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Inception(nn.Module):
    """Four branches on the same input, concatenated: 1x1 | 1x1-3x3 | 1x1-5x5 | pool-1x1."""

    def __init__(self, cin: int, widths: tuple[int, ...], norm: str) -> None:
        super().__init__()
        c1, r3, c3, r5, c5, cp = widths
        self.branch1 = ConvBlock(cin, c1, 1, norm)
        self.branch3 = nn.Sequential(ConvBlock(cin, r3, 1, norm), ConvBlock(r3, c3, 3, norm))
        self.branch5 = nn.Sequential(ConvBlock(cin, r5, 1, norm), ConvBlock(r5, c5, 5, norm))
        self.branch_pool = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1), ConvBlock(cin, cp, 1, norm)
        )
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, cin, H, W) -> (B, c1 + c3 + c5 + cp, H, W)
        branches = (self.branch1, self.branch3, self.branch5, self.branch_pool)
        return torch.cat([b(x) for b in branches], dim=1)


class AuxClassifier(nn.Sequential):
    """Average-pool, 1x1 convolution, a hidden fully connected layer, dropout, logits."""

    def __init__(self, cin: int, config: GoogLeNetConfig) -> None:
        width = max(128 // config.width_divisor, 8)
        super().__init__(
            nn.AdaptiveAvgPool2d(2),  # 4x4 of 14x14 in the paper (5x5 pool, stride 3)
            ConvBlock(cin, width, 1, config.norm),
            nn.Flatten(),
            nn.Linear(width * 4, config.aux_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.aux_dropout),
            nn.Linear(config.aux_hidden, config.num_classes),
        )


class GoogLeNet(nn.Module):
    def __init__(self, config: GoogLeNetConfig) -> None:
        super().__init__()
        if config.width_divisor < 1:
            raise ValueError(f"width_divisor must be at least 1, got {config.width_divisor}")
        if config.norm not in ("batch", "none"):
            raise ValueError(f"unknown norm {config.norm!r}; use 'batch' or 'none'")
        self.config = config
        norm, s = config.norm, config.stem_width
        # Stem as the paper's (a large strided convolution, max-pool, 1x1, 3x3) with one
        # pooling fewer for small inputs: 64x64 -> 16x16 before module 3a (224 -> 28 there).
        self.stem = nn.Sequential(
            ConvBlock(config.in_channels, s, 5, norm, stride=2),
            nn.MaxPool2d(3, 2, padding=1),
            ConvBlock(s, s, 1, norm),
            ConvBlock(s, 2 * s, 3, norm),
        )
        channels = 2 * s
        blocks: dict[str, nn.Module] = {}
        for name, widths in MODULES.items():
            if name in ("4a", "5a"):  # a 3x3/2 max-pool before stages 4 and 5
                blocks[f"pool{name[0]}"] = nn.MaxPool2d(3, 2, padding=1)
            module = Inception(
                channels, tuple(max(w // config.width_divisor, 1) for w in widths), norm
            )
            blocks[name] = module
            channels = module.out_channels
            if name == "4a":
                aux1_in = channels
            if name == "4d":
                aux2_in = channels
        self.blocks = nn.ModuleDict(blocks)
        self.aux1 = AuxClassifier(aux1_in, config) if config.aux_logits else None
        self.aux2 = AuxClassifier(aux2_in, config) if config.aux_logits else None
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(channels, config.num_classes),
        )

    def forward(
        self, x: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # 1. stem: (B, C, 64, 64) -> (B, 2 * stem_width, 16, 16)
        h = self.stem(x)
        aux: list[torch.Tensor] = []
        # 2. modules 3a-3b at 16x16, 4a-4e at 8x8, 5a-5b at 4x4; auxiliary heads read 4a and 4d
        for name, block in self.blocks.items():
            h = block(h)
            if self.training and self.aux1 is not None and self.aux2 is not None:
                if name == "4a":
                    aux.append(self.aux1(h))
                elif name == "4d":
                    aux.append(self.aux2(h))
        # 3. global average pool, dropout, logits: (B, channels) -> (B, num_classes)
        logits = self.head(h)
        if aux:
            return logits, aux[0], aux[1]
        return logits


def googlenet_loss(
    output: torch.Tensor | tuple[torch.Tensor, ...], target: torch.Tensor, **kwargs: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, main logits): cross-entropy of the logits plus 0.3 x each auxiliary's."""
    ce = nn.functional.cross_entropy
    if isinstance(output, tuple):
        logits, *aux = output
        loss = ce(logits, target, **kwargs) + sum(AUX_WEIGHT * ce(a, target, **kwargs) for a in aux)
        return loss, logits
    return ce(output, target, **kwargs), output


@register_model("googlenet")
def googlenet(**config: object) -> GoogLeNet:
    return GoogLeNet(GoogLeNetConfig(**config))  # type: ignore[arg-type]
