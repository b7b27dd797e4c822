"""Trainers for ``vae-digits`` and ``vae-shapes``: convolutional VAEs with held-out PSNR.

``vae-digits`` also fits PCA with as many components as the VAE has latent dimensions on
the same training split and reports its held-out PSNR beside the VAE's: the linear
baseline a 16-number code has to beat.

``vae-shapes`` is also judged on whether a reconstruction keeps its shape: the shipped
``resnet18-shapes`` must see the input's class in it (``shape_agreement``). A flat code
(32 or 64 numbers through linear layers) blurred every outline into a round blob, which
costs little PSNR but leaves a classifier guessing "circle": the decoder has to redraw a
rotated polygon from a vector. Its code is therefore a 16x16 map of 4 channels (as latent
diffusion's autoencoders keep one), where each cell describes its own 4x4 patch and a
corner stays where it was. It also trains on a perceptual distance in the features of a
*different* frozen shapes classifier (``vgg11-shapes``); the judge never takes part.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import config_dict, save_checkpoint
from models.data.digits import load_digits_split
from models.data.shapes import SEEDS, make_classification
from models.registry import register_trainer
from models.training.loop import batches, seed_everything, train_epochs
from models.vae import VAE, VAEConfig, elbo_loss, kl_divergence, psnr


@torch.no_grad()
def evaluate_reconstruction(model: VAE, x: torch.Tensor, batch_size: int = 256) -> dict[str, Any]:
    """Held-out figures of reconstructions from the posterior mean.

    ``psnr`` is 10 log10(1 / MSE) with the MSE over every pixel of the set;
    ``psnr_per_image`` is the mean of the images' own PSNRs; ``kl`` is the mean KL in nats.
    """
    model.eval()
    sq, db, kl = 0.0, 0.0, 0.0
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        mu, logvar = model.encode(xb)
        x_hat = model.decode(mu)
        sq += float((x_hat - xb).pow(2).sum())
        db += float(psnr(x_hat, xb).sum())
        kl += float(kl_divergence(mu, logvar).sum())
    mse = sq / x.numel()
    return {
        "psnr": float(-10 * torch.log10(torch.tensor(mse))),
        "psnr_per_image": db / len(x),
        "mse": mse,
        "kl": kl / len(x),
        "n_eval": len(x),
    }


WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
SHAPES_JUDGE = WEIGHTS / "resnet18-shapes.safetensors"
SHAPES_PERCEIVER = WEIGHTS / "vgg11-shapes.safetensors"  # perceptual loss; never the judge
PERCEPTUAL_WEIGHT = 5.0  # against the summed squared error (tens per image)


class ShapeFeatures(torch.nn.Module):
    """A frozen VGG shapes classifier as a perceptual distance: ``distance(x_hat, x)`` per
    image (B,) is the mean squared difference of its feature maps at the end of each of its
    five stages, plus KL(p(x) || p(x_hat)) of its class probabilities (the reconstruction
    should read as the same shape to it). Gradients flow to ``x_hat`` only."""

    def __init__(self, weights: Path = SHAPES_PERCEIVER) -> None:
        super().__init__()
        from models.checkpoint import load_model

        net, sidecar = load_model(weights)
        self.net = net.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(sidecar["normalize"]["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(sidecar["normalize"]["std"]).view(1, 3, 1, 1))

    def read(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(the feature maps after each pooling, the log class probabilities)."""
        h = (x - self.mean) / self.std
        maps = []
        for layer in self.net.features:  # type: ignore[union-attr]
            h = layer(h)
            if isinstance(layer, torch.nn.MaxPool2d):
                maps.append(h)
        return maps, self.net.classifier(h).log_softmax(-1)  # type: ignore[operator]

    def distance(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.net.eval()  # batch-norm statistics and no dropout, also inside a train() step
        with torch.no_grad():
            maps, log_p = self.read(x)
        maps_hat, log_q = self.read(x_hat)
        feat = sum(((a - b).pow(2).flatten(1).mean(1) for a, b in zip(maps_hat, maps, strict=True)),
                   torch.zeros(len(x)))
        return feat + (log_p.exp() * (log_p - log_q)).sum(-1)


@torch.no_grad()
def shape_agreement(
    model: VAE, x: torch.Tensor, y: torch.Tensor, judge: Path = SHAPES_JUDGE, batch_size: int = 128
) -> dict[str, Any] | None:
    """Share of reconstructions that the shipped shapes classifier assigns the input's class
    (PSNR says how close the pixels are; this says whether the shape survived), beside the
    classifier's own accuracy on the inputs. None while the classifier is not trained.

    ``python -c "from models.training.vae import shipped_shape_agreement as f; print(f())"``
    """
    from models.checkpoint import load_model

    if not judge.exists():
        return None
    classifier, sidecar = load_model(judge)
    mean = torch.tensor(sidecar["normalize"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(sidecar["normalize"]["std"]).view(1, 3, 1, 1)
    model.eval()
    kept = right = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        x_hat = model.decode(model.encode(xb)[0]).clamp(0, 1)
        kept += int((classifier((x_hat - mean) / std).argmax(-1) == yb).sum())
        right += int((classifier((xb - mean) / std).argmax(-1) == yb).sum())
    return {
        "judge": judge.stem,
        "reconstruction_class_kept": round(kept / len(y), 4),
        "input_class_right": round(right / len(y), 4),
        "n_eval": len(y),
    }


def shipped_shape_agreement(n: int = 2000) -> dict[str, Any] | None:
    """``shape_agreement`` of the shipped ``vae-shapes`` on the held-out shapes."""
    from models.checkpoint import load_model

    model, _ = load_model(SHAPES_JUDGE.with_name("vae-shapes.safetensors"))
    x, y = make_classification(n, SEEDS["test"])
    return shape_agreement(model, x, y)  # type: ignore[arg-type]


def pca_psnr(x_train: torch.Tensor, x_test: torch.Tensor, components: int, seed: int) -> dict[str, Any]:
    """Held-out PSNR of PCA reconstructions (clipped to [0, 1], as the VAE's are)."""
    from sklearn.decomposition import PCA

    pca = PCA(components, random_state=seed).fit(x_train.flatten(1).numpy())
    flat = x_test.flatten(1).numpy()
    rec = torch.from_numpy(pca.inverse_transform(pca.transform(flat))).clamp(0, 1)
    rec = rec.view_as(x_test).float()
    mse = float((rec - x_test).pow(2).mean())
    return {
        "psnr": float(-10 * torch.log10(torch.tensor(mse))),
        "psnr_per_image": float(psnr(rec, x_test).mean()),
        "mse": mse,
        "components": components,
        "explained_variance": float(pca.explained_variance_ratio_.sum()),
    }


def fit_vae(
    model: VAE, next_batch: Callable[[int, int], torch.Tensor], epochs: int, steps: int,
    lr: float, desc: str, gen: torch.Generator,
    perceptual: ShapeFeatures | None = None, perceptual_weight: float = 0.0,
) -> float:
    """Minimise the model's negative ELBO with AdamW and a one-cycle schedule; wall seconds.

    With ``perceptual``, ``perceptual_weight`` times its per-image feature distance between
    reconstruction and input joins the loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)

    def step(epoch: int, i: int) -> dict[str, float]:
        model.train()
        x = next_batch(epoch, i)
        x_hat, mu, logvar = model(x, gen)
        out = elbo_loss(x_hat, x, mu, logvar, model.config.kl_weight, model.config.recon_scale)
        loss = out["loss"]
        figures = {"recon": out["recon"].item(), "kl": out["kl"].item()}
        if perceptual is not None:
            feat = perceptual.distance(x_hat, x).mean()
            loss = loss + perceptual_weight * feat
            figures["feat"] = feat.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        return {"loss": loss.item(), **figures}

    return train_epochs(step, epochs, steps, desc=desc)


@register_trainer("vae-digits")
def train_vae_digits(out_dir: Path, *, seed: int = 0, quick: bool = False) -> dict[str, Any]:
    gen = seed_everything(seed)
    x_train, _, x_test, _ = load_digits_split(32)
    config = VAEConfig(in_channels=1, image_size=32, latent_dim=16, channels=(32, 64, 128),
                       norm="batch", kl_weight=0.1)
    model = VAE(config)
    epochs, batch_size = (1, 64) if quick else (60, 64)
    steps = (len(x_train) + batch_size - 1) // batch_size
    order: list[torch.Tensor] = []

    def next_batch(epoch: int, i: int) -> torch.Tensor:
        if i == 0:
            order[:] = list(batches(len(x_train), batch_size, gen))
        return x_train[order[i]]

    seconds = fit_vae(model, next_batch, epochs, steps, 2e-3, "vae-digits", gen)
    metrics = evaluate_reconstruction(model, x_test)
    metrics["pca"] = pca_psnr(x_train, x_test, config.latent_dim, seed)
    metrics.update(split="sklearn digits, train_test_split(test_size=0.25, random_state=0, stratify=y)",
                   train_seconds=round(seconds, 1), epochs=epochs)
    save_checkpoint(
        Path(out_dir) / "vae-digits.safetensors",
        model,
        {
            "arch": "vae",
            "config": config_dict(config),
            "labels": [],
            "input": {"channels": 1, "height": 32, "width": 32},
            "metrics": metrics,
            "seed": seed,
        },
    )
    return metrics


@register_trainer("vae-shapes")
def train_vae_shapes(out_dir: Path, *, seed: int = 0, quick: bool = False) -> dict[str, Any]:
    gen = seed_everything(seed)
    config = VAEConfig(in_channels=3, image_size=64, latent_dim=1024, channels=(32, 64),
                       norm="batch", kl_weight=0.01, latent_side=16)
    model = VAE(config)
    epochs, per_epoch, batch_size = (1, 256, 64) if quick else (30, 2048, 64)
    steps = per_epoch // batch_size
    data: dict[str, Any] = {}

    def next_batch(epoch: int, i: int) -> torch.Tensor:
        if i == 0:  # fresh images every epoch, from a training seed of their own
            data["x"], _ = make_classification(per_epoch, SEEDS["train"] + seed * 1000 + epoch)
            data["order"] = list(batches(per_epoch, batch_size, gen))
        return data["x"][data["order"][i]]

    seconds = fit_vae(model, next_batch, epochs, steps, 2e-3, "vae-shapes", gen,
                      perceptual=ShapeFeatures(), perceptual_weight=PERCEPTUAL_WEIGHT)
    start = time.perf_counter()
    x_test, y_test = make_classification(256 if quick else 2000, SEEDS["test"])
    metrics = evaluate_reconstruction(model, x_test)
    metrics["shapes"] = shape_agreement(model, x_test, y_test)
    if metrics["shapes"] is not None:
        metrics["shape_kept"] = metrics["shapes"]["reconstruction_class_kept"]
    metrics["pca"] = pca_psnr(data["x"], x_test, config.latent_dim, seed)  # last epoch's images
    metrics.update(
        split=f"make_classification(n, SEEDS['test']={SEEDS['test']}); training seeds "
              f"{SEEDS['train']}+{seed * 1000}..+{epochs - 1}",
        train_seconds=round(seconds, 1), eval_seconds=round(time.perf_counter() - start, 1),
        epochs=epochs, images_seen=epochs * per_epoch,
        perceptual={"net": SHAPES_PERCEIVER.stem, "weight": PERCEPTUAL_WEIGHT},
    )
    save_checkpoint(
        Path(out_dir) / "vae-shapes.safetensors",
        model,
        {
            "arch": "vae",
            "config": config_dict(config),
            "labels": [],
            "input": {"channels": 3, "height": 64, "width": 64},
            "metrics": metrics,
            "seed": seed,
        },
    )
    return metrics
