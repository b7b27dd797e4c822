"""The VAE's predictor: ``reconstruct`` (image -> latent mean -> image) and ``sample``
(images decoded from the prior, one seed each, or the decoded path between two images)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch

from models.checkpoint import load_model
from models.images import batch_tensor, png_artifact
from models.kinds.reconstruct import ReconstructArgs
from models.kinds.sample import SampleArgs
from models.predictor import InvalidRequest, Predictor, Request, StepCallback
from models.registry import register_predictor
from models.vae import psnr

DEFAULT_PATH_STEPS = 8  # images on an interpolation path when the request names no steps


def prior_latent(seed: int, latent_dim: int, truncation: float = 1.0) -> torch.Tensor:
    """z ~ N(0, truncation^2 I) drawn on the CPU from ``seed``: the same seed, the same z."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(latent_dim, generator=gen) * truncation


def interpolate(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` latents evenly spaced on the segment a -> b, both ends included: (steps, D)."""
    t = torch.linspace(0.0, 1.0, steps, device=a.device, dtype=a.dtype)[:, None]
    return (1 - t) * a[None] + t * b[None]


@register_predictor("vae")
class VAEPredictor(Predictor):
    kinds = ("reconstruct", "sample")

    def load(self) -> None:
        assert self.entry.weights is not None, f"{self.entry.name} has no weights"
        self.model, sidecar = load_model(self.entry.weights, self.entry.sha256, self.device)
        self.latent_dim = int(sidecar["config"]["latent_dim"])

    def modules_for_memory(self) -> list[torch.nn.Module]:
        return [self.model]

    def batch_key(self, request: Request) -> Hashable:
        # Reconstructions share one encoder pass; samples share one decoder pass.
        return (request.kind,)

    @torch.inference_mode()
    def predict(
        self, batch: list[Request], on_step: StepCallback | None = None
    ) -> list[dict[str, Any] | None]:
        unknown = sorted({r.kind for r in batch} - set(self.kinds))
        if unknown:
            raise InvalidRequest(f"{self.entry.name} does not serve {unknown}")
        results: list[dict[str, Any] | None] = [None] * len(batch)
        recon = [i for i, r in enumerate(batch) if r.kind == "reconstruct"]
        sample = [i for i, r in enumerate(batch) if r.kind == "sample"]
        if recon:
            for i, out in zip(recon, self._reconstruct([batch[i] for i in recon]), strict=True):
                results[i] = out
        if sample:
            for i, out in zip(sample, self._sample([batch[i] for i in sample]), strict=True):
                results[i] = out
        return results

    def _inputs(self, images: list[Any]) -> torch.Tensor:
        spec = self.entry.input
        return batch_tensor(images, spec.channels, spec.height, spec.width).to(self.device)

    def _reconstruct(self, batch: list[Request[ReconstructArgs]]) -> list[dict[str, Any]]:
        spec = self.entry.input
        # 1. one encoder and decoder pass for all: (B, C, H, W) -> mu (B, D) -> (B, C, H, W)
        x = self._inputs([r.input.image for r in batch])
        mu, _ = self.model.encode(x)
        x_hat = self.model.decode(mu)
        mse = (x_hat - x).pow(2).flatten(1).mean(1)
        db = psnr(x_hat, x)
        return [
            {
                "reconstruction": png_artifact("reconstruction.png", x_hat[j]),
                "latent": [float(v) for v in mu[j].tolist()],
                "mse": float(mse[j]),
                "psnr": float(db[j]),
                "input_size": {"height": spec.height, "width": spec.width},
            }
            for j in range(len(batch))
        ]

    def _sample(self, batch: list[Request[SampleArgs]]) -> list[dict[str, Any]]:
        spec = self.entry.input
        # 1. gather every latent the batch asks for: prior draws by seed, or a path
        latents: list[torch.Tensor] = []
        plans: list[tuple[str, int, list[Any]]] = []  # (mode, start row, seeds or ts)
        for r in batch:
            inp = r.input
            if inp.class_index is not None:
                raise InvalidRequest(f"{self.entry.name} is unconditional: it takes no class label")
            if inp.interpolate_between:
                steps = inp.steps or DEFAULT_PATH_STEPS
                mu, _ = self.model.encode(self._inputs(inp.interpolate_between))  # (2, D)
                plans.append(("path", sum(len(z) for z in latents), torch.linspace(0, 1, steps).tolist()))
                latents.append(interpolate(mu[0], mu[1], steps))
            else:
                seeds = inp.seeds
                plans.append(("prior", sum(len(z) for z in latents), seeds))
                z = [prior_latent(s, self.latent_dim, inp.truncation) for s in seeds]
                latents.append(torch.stack(z).to(self.device) if z else torch.zeros(0, self.latent_dim))
        # 2. one decoder pass for all of them: (N, D) -> (N, C, H, W)
        z_all = torch.cat([z.to(self.device) for z in latents])
        images = self.model.decode(z_all) if len(z_all) else z_all
        # 3. split the images back per request
        results: list[dict[str, Any]] = []
        for mode, start, items in plans:
            if mode == "path":
                arts = [png_artifact(f"path-{k}.png", images[start + k], t=round(float(t), 6))
                        for k, t in enumerate(items)]
            else:
                arts = [png_artifact(f"image-{k}.png", images[start + k], seed=int(s))
                        for k, s in enumerate(items)]
            results.append({"images": arts, "input_size": {"height": spec.height, "width": spec.width}})
        return results
