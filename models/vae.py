"""Convolutional variational autoencoder (Kingma & Welling, 2014).

A strided-convolution encoder maps an image to the mean and log-variance of a diagonal
Gaussian posterior q(z|x); a sample z = mu + sigma * eps (the reparameterisation trick)
goes through a transposed-convolution decoder back to an image in [0, 1]. Training
minimises the negative ELBO: a Gaussian reconstruction term (summed squared error per
image) plus ``kl_weight`` times KL(q(z|x) || N(0, I)).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import torch
from torch import nn

from models.registry import register_model


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 1  # image channels (1 grayscale, 3 RGB)
    image_size: int = 32  # square input side; must be divisible by 2 ** len(channels)
    latent_dim: int = 16  # size of the latent code z
    channels: tuple[int, ...] = (32, 64, 128)  # encoder widths, one stride-2 conv each
    norm: Literal["batch", "group", "none"] = "batch"  # normalisation after each conv
    kl_weight: float = 1.0  # weight of the KL term in the loss (1.0 = the true ELBO)
    recon_scale: float = 1.0  # weight of the summed squared error (1 / (2 sigma^2))
    # 0: a flat code through linear layers. Else the code is a map of side latent_side (the
    # deepest feature map's, image_size / 2^len(channels)) with latent_dim / latent_side^2
    # channels, through 1x1 and 3x3 convolutions, as latent diffusion's autoencoders keep
    # where things are; latents are still handled flattened, (B, latent_dim).
    latent_side: int = 0


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, summed over latent dimensions: (B,).

    Closed form 0.5 * sum(mu^2 + exp(logvar) - 1 - logvar); exactly zero at mu=0, logvar=0.
    """
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)


def elbo_loss(
    x_hat: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
    kl_weight: float = 1.0, recon_scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Negative ELBO averaged over the batch: ``recon_scale * SSE + kl_weight * KL``.

    Returns ``loss`` (to minimise), ``recon`` (summed squared error per image), ``kl``.
    """
    if x_hat.shape != x.shape:
        raise ValueError(f"reconstruction shape {tuple(x_hat.shape)} differs from input {tuple(x.shape)}")
    if kl_weight < 0:
        raise ValueError(f"kl_weight must be non-negative, got {kl_weight}")
    recon = (x_hat - x).pow(2).flatten(1).sum(dim=1).mean()
    kl = kl_divergence(mu, logvar).mean()
    return {"loss": recon_scale * recon + kl_weight * kl, "recon": recon, "kl": kl}


class VAE(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        if not config.channels:
            raise ValueError("channels must name at least one encoder width")
        if config.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {config.in_channels}")
        if config.latent_dim < 1:
            raise ValueError(f"latent_dim must be positive, got {config.latent_dim}")
        if config.norm not in ("batch", "group", "none"):
            raise ValueError(f"unknown norm {config.norm!r}; use 'batch', 'group' or 'none'")
        factor = 2 ** len(config.channels)
        if config.image_size % factor:
            raise ValueError(
                f"image_size {config.image_size} is not divisible by 2^{len(config.channels)} = {factor}"
            )
        self.config = config
        self.bottom = config.image_size // factor  # spatial side of the deepest feature map
        top = config.channels[-1]
        flat = top * self.bottom * self.bottom
        side = config.latent_side
        if side and (side != self.bottom or config.latent_dim % (side * side)):
            raise ValueError(f"latent_side {side} must be the deepest map's side {self.bottom} "
                             f"and divide latent_dim {config.latent_dim} into channels")
        self.latent_channels = config.latent_dim // (side * side) if side else 0

        encoder: list[nn.Module] = []
        c_in = config.in_channels
        for c_out in config.channels:  # each halves the side
            encoder += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), _norm(config.norm, c_out),
                        nn.LeakyReLU(0.2)]
            c_in = c_out
        if side:  # mean and log-variance per position of the map
            self.encoder = nn.Sequential(*encoder)
            self.to_stats: nn.Module = nn.Conv2d(top, 2 * self.latent_channels, 1)
            self.from_latent: nn.Module = nn.Conv2d(self.latent_channels, top, 3, padding=1)
        else:
            self.encoder = nn.Sequential(*encoder, nn.Flatten())
            self.to_stats = nn.Linear(flat, 2 * config.latent_dim)  # mean and log-variance
            self.from_latent = nn.Linear(config.latent_dim, flat)
        decoder: list[nn.Module] = []
        widths = list(reversed(config.channels))
        for c_in, c_out in pairwise(widths):  # each doubles the side
            decoder += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), _norm(config.norm, c_out),
                        nn.LeakyReLU(0.2)]
        decoder += [nn.ConvTranspose2d(widths[-1], widths[-1], 4, stride=2, padding=1),
                    _norm(config.norm, widths[-1]), nn.LeakyReLU(0.2),
                    nn.Conv2d(widths[-1], config.in_channels, 3, padding=1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*decoder)

    def _check(self, x: torch.Tensor) -> None:
        c, s = self.config.in_channels, self.config.image_size
        if x.ndim != 4 or x.shape[1:] != (c, s, s):
            raise ValueError(f"expected input of shape (B, {c}, {s}, {s}), got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each (B, latent_dim)."""
        self._check(x)
        stats = self.to_stats(self.encoder(x))  # (B, 2 * latent_dim) or (B, 2 * C, side, side)
        mu, logvar = stats.chunk(2, dim=1)
        return mu.flatten(1), logvar.flatten(1).clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] from latents (B, latent_dim)."""
        if z.ndim != 2 or z.shape[1] != self.config.latent_dim:
            raise ValueError(f"expected latents of shape (B, {self.config.latent_dim}), got {tuple(z.shape)}")
        if self.latent_channels:
            z = z.view(-1, self.latent_channels, self.bottom, self.bottom)
        h = self.from_latent(z).view(-1, self.config.channels[-1], self.bottom, self.bottom)
        return self.decoder(h)

    @staticmethod
    def reparameterize(
        mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I): a sample that gradients flow through."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + (0.5 * logvar).exp() * eps

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, mu, logvar); samples z in training, uses the mean in eval."""
        # 1. encode: (B, C, H, W) -> mu, logvar (B, latent_dim)
        mu, logvar = self.encode(x)
        # 2. reparameterise (the mean itself when not training)
        z = self.reparameterize(mu, logvar, generator) if self.training else mu
        # 3. decode: (B, latent_dim) -> (B, C, H, W)
        return self.decode(z), mu, logvar

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Negative ELBO of a batch with this model's KL weight (see ``elbo_loss``)."""
        x_hat, mu, logvar = self(x, generator)
        return elbo_loss(x_hat, x, mu, logvar, self.config.kl_weight, self.config.recon_scale)


@register_model("vae")
def vae(**config: object) -> VAE:
    if "channels" in config:
        config["channels"] = tuple(config["channels"])  # type: ignore[arg-type]
    return VAE(VAEConfig(**config))  # type: ignore[arg-type]


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, for images in [0, 1]: (B,)."""
    mse = (x_hat - x).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)
