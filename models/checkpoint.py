"""Checkpoint I/O: a ``.safetensors`` file of the state dict and a JSON sidecar beside it.

The sidecar holds everything needed to rebuild the model without guessing:
``{"arch", "config", "labels", "input": {"channels", "height", "width"}, "metrics", ...}``.
Only safetensors are ever read; anything else is refused before it is opened.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


class UnsafeCheckpoint(ValueError):
    """A weights file that is not safetensors, or whose checksum does not match."""


def sidecar_path(weights: Path) -> Path:
    return Path(weights).with_suffix(".json")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def config_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON values (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def save_checkpoint(weights: Path, model: torch.nn.Module, sidecar: dict[str, Any]) -> Path:
    """Write ``weights`` (safetensors, contiguous CPU tensors) and its JSON sidecar."""
    weights = Path(weights)
    if weights.suffix != ".safetensors":
        raise ValueError(f"weights must be a .safetensors file, got {weights.name}")
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights))
    sidecar_path(weights).write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return weights


def load_state(weights: Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors state dict; refuse any other format or a checksum mismatch."""
    weights = Path(weights)
    if weights.suffix != ".safetensors":
        raise UnsafeCheckpoint(f"refusing to load {weights.name}: only .safetensors weights load")
    with open(weights, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or int.from_bytes(head, "little") > 100_000_000:
        raise UnsafeCheckpoint(f"{weights.name} is not a safetensors file")
    if sha256 is not None:
        actual = sha256_of(weights)
        if actual != sha256.lower():
            raise UnsafeCheckpoint(
                f"checksum mismatch for {weights.name}: expected {sha256}, got {actual}"
            )
    return load_file(str(weights))


def load_sidecar(weights: Path) -> dict[str, Any]:
    path = sidecar_path(weights)
    if not path.exists():
        raise FileNotFoundError(f"missing sidecar {path.name} beside {Path(weights).name}")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def load_model(
    weights: Path, sha256: str | None = None, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model its sidecar describes and load its weights (eval mode)."""
    from models.registry import get_model

    sidecar = load_sidecar(weights)
    model = get_model(sidecar["arch"], **sidecar.get("config", {}))
    model.load_state_dict(load_state(weights, sha256))
    return model.to(device).eval(), sidecar
