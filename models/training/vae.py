"""Trainers for ``vae-digits`` and ``vae-shapes``: convolutional VAEs with held-out PSNR.

``vae-digits`` also fits PCA with as many components as the VAE has latent dimensions on
the same training split and reports its held-out PSNR beside the VAE's: the linear
baseline a 16-number code has to beat.
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
from models.vae import VAE, VAEConfig, kl_divergence, psnr


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


SHAPES_JUDGE = Path(__file__).resolve().parent.parent / "weights" / "resnet18-shapes.safetensors"


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
) -> float:
    """Minimise the model's negative ELBO with AdamW and a one-cycle schedule; wall seconds."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)

    def step(epoch: int, i: int) -> dict[str, float]:
        model.train()
        out = model.loss(next_batch(epoch, i), gen)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        sched.step()
        return {"loss": out["loss"].item(), "kl": out["kl"].item()}

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
    config = VAEConfig(in_channels=3, image_size=64, latent_dim=32, channels=(32, 64, 96, 128),
                       norm="batch", kl_weight=0.1)
    model = VAE(config)
    epochs, per_epoch, batch_size = (1, 256, 64) if quick else (20, 2048, 64)
    steps = per_epoch // batch_size
    data: dict[str, Any] = {}

    def next_batch(epoch: int, i: int) -> torch.Tensor:
        if i == 0:  # fresh images every epoch, from a training seed of their own
            data["x"], _ = make_classification(per_epoch, SEEDS["train"] + seed * 1000 + epoch)
            data["order"] = list(batches(per_epoch, batch_size, gen))
        return data["x"][data["order"][i]]

    seconds = fit_vae(model, next_batch, epochs, steps, 2e-3, "vae-shapes", gen)
    start = time.perf_counter()
    x_test, y_test = make_classification(256 if quick else 2000, SEEDS["test"])
    metrics = evaluate_reconstruction(model, x_test)
    metrics["shapes"] = shape_agreement(model, x_test, y_test)
    metrics["pca"] = pca_psnr(data["x"], x_test, config.latent_dim, seed)  # last epoch's images
    metrics.update(
        split=f"make_classification(n, SEEDS['test']={SEEDS['test']}); training seeds "
              f"{SEEDS['train']}+{seed * 1000}..+{epochs - 1}",
        train_seconds=round(seconds, 1), eval_seconds=round(time.perf_counter() - start, 1),
        epochs=epochs, images_seen=epochs * per_epoch,
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
