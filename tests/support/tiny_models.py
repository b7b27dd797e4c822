"""Tiny models built and saved by the tests themselves, with a catalog file naming them,
so HTTP tests can serve every kind without the built-in weights."""

from __future__ import annotations

from pathlib import Path

import torch

SHAPE_CLASSES = ["background", "circle", "square", "triangle", "star"]


def _save(folder: Path, name: str, arch: str, config: dict, labels: list[str],
          channels: int, size: int) -> str:
    from models.checkpoint import save_checkpoint
    from models.registry import get_model

    torch.manual_seed(0)
    model = get_model(arch, **config)
    path = folder / f"{name}.safetensors"
    save_checkpoint(path, model, {"arch": arch, "config": config, "labels": labels,
                                  "input": {"channels": channels, "height": size, "width": size},
                                  "metrics": {}})
    return path.name


def build_tiny_catalog(folder: Path) -> Path:
    """Write tiny U-Net, VAEs, a torchvision resnet18, diffusers pipelines (one of them
    pickle-only) into ``folder`` and return the catalog file that serves them."""
    from safetensors.torch import save_file
    from torchvision.models import resnet18

    from tests.models.tiny_pipeline import (
        save_tiny_controlnet,
        save_tiny_lora,
        save_tiny_text_pipeline,
        save_tiny_unet_pipeline,
    )

    folder.mkdir(parents=True, exist_ok=True)
    unet = _save(folder, "tiny-unet", "unet", {"in_channels": 3, "num_classes": 5,
                                               "base_width": 4, "depth": 2},
                 SHAPE_CLASSES, 3, 32)
    vae_rgb = _save(folder, "tiny-vae-rgb", "vae", {"in_channels": 3, "image_size": 16,
                                                    "latent_dim": 4, "channels": [8, 16]},
                    [], 3, 16)
    vae_gray = _save(folder, "tiny-vae-gray", "vae", {"in_channels": 1, "image_size": 16,
                                                      "latent_dim": 4, "channels": [8, 16]},
                     [], 1, 16)
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in resnet18(num_classes=3).state_dict().items()},
              str(folder / "tv-resnet18.safetensors"))
    (folder / "tv-labels.txt").write_text("cat\ndog\nbird\n")
    save_tiny_text_pipeline(folder / "tiny-sd")
    save_tiny_lora(folder / "tiny-sd", folder / "lora-red.safetensors", seed=1)
    save_tiny_lora(folder / "tiny-sd", folder / "lora-blue.safetensors", seed=2)
    save_tiny_controlnet(folder / "tiny-sd", folder / "tiny-controlnet", seed=3)
    save_tiny_unet_pipeline(folder / "tiny-ddpm")
    pickled = save_tiny_unet_pipeline(folder / "pickle-only")
    for f in pickled.rglob("*.safetensors"):  # keep only a pickle copy of the weights
        torch.save(__import__("safetensors.torch").torch.load_file(str(f)),
                   f.with_name("diffusion_pytorch_model.bin"))
        f.unlink()
    catalog = folder / "tiny-catalog.toml"
    catalog.write_text(f"""
[models.tiny-unet]
family = "unet"
kinds = ["segment"]
weights = "{unet}"
max_batch = 8

[models.tiny-vae-rgb]
family = "vae"
kinds = ["reconstruct", "sample"]
weights = "{vae_rgb}"

[models.tiny-vae-gray]
family = "vae"
kinds = ["reconstruct", "sample"]
weights = "{vae_gray}"

[models.tv-resnet18]
family = "torchvision"
arch = "resnet18"
kinds = ["classify"]
weights = "tv-resnet18.safetensors"
labels = "tv-labels.txt"
input = {{ channels = 3, height = 64, width = 64 }}

[models.tiny-sd]
family = "diffusers"
kinds = ["generate"]
path = "tiny-sd"
max_batch = 4
limits = {{ max_side = 64, max_steps = 50 }}

[models.tiny-sd-lora]
family = "diffusers"
kinds = ["generate"]
path = "tiny-sd"
max_batch = 4
limits = {{ max_side = 64, max_steps = 50 }}
loras.red = {{ path = "lora-red.safetensors" }}
loras.blue = {{ path = "lora-blue.safetensors" }}

[models.tiny-sd-control]
family = "diffusers"
kinds = ["generate"]
path = "tiny-sd"
controlnet_path = "tiny-controlnet"
max_batch = 4
limits = {{ max_side = 64, max_steps = 50 }}

[models.tiny-ddpm]
family = "diffusers"
kinds = ["generate"]
path = "tiny-ddpm"

[models.pickle-only]
family = "diffusers"
kinds = ["generate"]
path = "pickle-only"
""")
    return catalog
