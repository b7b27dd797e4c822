"""Class-conditional DCGAN (Radford et al., 2016) and its ``sample`` predictor.

The generator maps a latent z (and a class embedding, concatenated to it) through
transposed convolutions with batch norm and ReLU to a tanh image in [-1, 1]. The
discriminator is strided convolutions with LeakyReLU under spectral normalisation; it
conditions on the class by projection (Miyato & Koyama, 2018):
score = linear(phi(x)) + <embed(y), phi(x)>, with phi(x) the globally pooled features.
Only the generator ships; the sidecar rebuilds it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.checkpoint import load_model
from models.images import png_artifact
from models.kinds.sample import SampleArgs
from models.predictor import InvalidRequest, Predictor, Request, StepCallback
from models.registry import register_model, register_predictor


@dataclass(frozen=True)
class DCGANConfig:
    latent_dim: int = 64  # size of the latent z
    num_classes: int = 10  # conditioning classes (0 = unconditional)
    embed_dim: int = 32  # class embedding concatenated to z in the generator
    channels: int = 1  # image channels
    image_size: int = 32  # square output side: 4 * 2 ** (number of upsamplings)
    g_width: int = 48  # generator width at the last upsampling; doubles per level down
    d_width: int = 48  # discriminator width at the first conv; doubles per level


def _levels(config: DCGANConfig) -> int:
    """Stride-2 stages between 4x4 and image_size (32 → 3)."""
    n = round(math.log2(config.image_size / 4))
    if n < 1 or 4 * 2**n != config.image_size:
        raise ValueError(
            f"image_size must be 4 times a power of two (8, 16, 32, ...), got {config.image_size}"
        )
    return n


class Generator(nn.Module):
    def __init__(self, config: DCGANConfig) -> None:
        super().__init__()
        if config.latent_dim < 1:
            raise ValueError(f"latent_dim must be positive, got {config.latent_dim}")
        if config.num_classes < 0:
            raise ValueError(
                f"num_classes must be 0 (unconditional) or more, got {config.num_classes}"
            )
        self.config = config
        n = _levels(config)
        widths = [config.g_width * 2 ** (n - 1 - i) for i in range(n)]  # e.g. 192, 96, 48
        self.embed = (
            nn.Embedding(config.num_classes, config.embed_dim) if config.num_classes else None
        )
        in_dim = config.latent_dim + (config.embed_dim if config.num_classes else 0)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(in_dim, widths[0], 4, 1, 0, bias=False),  # (B, w0, 4, 4)
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(True),
        ]
        for a, b in itertools.pairwise(widths):  # each doubles the side
            layers += [
                nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False),
                nn.BatchNorm2d(b),
                nn.ReLU(True),
            ]
        layers += [nn.ConvTranspose2d(widths[-1], config.channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        # 1. condition: concatenate the class embedding to z  (B, latent + embed)
        if self.embed is not None:
            if labels is None:
                raise ValueError("this generator is class-conditional: labels are required")
            z = torch.cat([z, self.embed(labels)], dim=1)
        # 2. upsample from 1x1 to the image  (B, C, H, W) in [-1, 1]
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    def __init__(self, config: DCGANConfig) -> None:
        super().__init__()
        n = _levels(config)
        widths = [config.d_width * 2**i for i in range(n)]  # e.g. 48, 96, 192
        sn = nn.utils.parametrizations.spectral_norm  # keeps the projection's scale in check
        layers: list[nn.Module] = []
        for a, b in zip(
            [config.channels, *widths[:-1]], widths, strict=True
        ):  # each halves the side
            layers += [sn(nn.Conv2d(a, b, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        self.features = nn.Sequential(*layers)
        self.linear = sn(nn.Linear(widths[-1], 1))
        self.embed = (
            sn(nn.Embedding(config.num_classes, widths[-1])) if config.num_classes else None
        )

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        # 1. strided convolutions down to 4x4, summed over space  (B, W)
        h = self.features(x).sum(dim=(2, 3))
        # 2. unconditional score plus the class projection  (B,)
        score = self.linear(h).squeeze(1)
        if self.embed is not None:
            if labels is None:
                raise ValueError("this discriminator is class-conditional: labels are required")
            score = score + (self.embed(labels) * h).sum(dim=1)
        return score


@register_model("dcgan")
def dcgan(**config: Any) -> Generator:
    return Generator(DCGANConfig(**config))


def latent_for_seed(
    seed: int, config: DCGANConfig, class_index: int | None, truncation: float
) -> tuple[torch.Tensor, int | None]:
    """The latent (latent_dim,) and class of one image, from its own generator.

    z is drawn first, so a seed gives the same z whatever the class; a missing class of a
    conditional model is then drawn from the same generator.
    """
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn(config.latent_dim, generator=gen) * truncation
    if config.num_classes and class_index is None:
        class_index = int(torch.randint(config.num_classes, (1,), generator=gen))
    return z, class_index


@register_predictor("dcgan")
class GANPredictor(Predictor):
    kinds = ("sample",)

    def load(self) -> None:
        assert self.entry.weights is not None, f"{self.entry.name} has no weights"
        self.model, sidecar = load_model(self.entry.weights, self.entry.sha256, self.device)
        self.config = DCGANConfig(**sidecar["config"])
        self.labels = self.entry.labels or [str(i) for i in range(self.config.num_classes)]

    def modules_for_memory(self) -> list[nn.Module]:
        return [self.model]

    def _check(self, request: Request[SampleArgs]) -> None:
        inp = request.input
        if request.kind != "sample":
            raise InvalidRequest(f"{self.entry.name} serves 'sample', not {request.kind!r}")
        if inp.interpolate_between is not None:
            raise InvalidRequest(
                f"{self.entry.name} has no encoder: interpolate_between needs a VAE"
            )
        if not math.isfinite(inp.truncation):
            raise InvalidRequest(f"truncation must be a positive number, got {inp.truncation}")
        cls = inp.class_index
        if cls is not None and not self.config.num_classes:
            raise InvalidRequest(f"{self.entry.name} is unconditional: it takes no class")
        if cls is not None and not 0 <= cls < self.config.num_classes:
            raise InvalidRequest(f"class index {cls} is outside 0..{self.config.num_classes - 1}")

    @torch.inference_mode()
    def predict(
        self, batch: list[Request[SampleArgs]], on_step: StepCallback | None = None
    ) -> list[dict[str, Any] | None]:
        # 1. one latent (and class) per image, each from its own seed
        zs, classes, counts = [], [], []
        for request in batch:
            self._check(request)
            inp = request.input
            for seed in inp.seeds:
                z, cls = latent_for_seed(seed, self.config, inp.class_index, inp.truncation)
                zs.append(z)
                classes.append(cls)
            counts.append(len(inp.seeds))
        z = torch.stack(zs).to(self.device)  # (N, latent)
        labels = torch.tensor(classes, device=self.device) if self.config.num_classes else None
        # 2. one generator pass for the whole batch, back to [0, 1]  (N, C, H, W)
        images = (self.model(z, labels).float() + 1) / 2
        # 3. split per request
        results: list[dict[str, Any] | None] = []
        start = 0
        for request, count in zip(batch, counts, strict=True):
            artifacts = []
            for i in range(count):
                meta: dict[str, Any] = {"seed": request.input.seeds[i]}
                if classes[start + i] is not None:
                    meta["class_label"] = self.labels[classes[start + i]]
                artifacts.append(png_artifact(f"image-{i}.png", images[start + i], **meta))
            results.append({"images": artifacts})
            start += count
        return results
