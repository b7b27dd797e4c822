"""LoRA adapters of a loaded diffusers pipeline.

Adapters are declared per model in the catalog (``[models.NAME.loras.ADAPTER]`` with a
``.safetensors`` path and an optional sha256). All of them load once, into the base
pipeline's own modules (peft layers beside the base weights), under their catalog names;
a request chooses some with a scale, and a call activates exactly those (``set_adapters``)
or none (``disable_lora``), so switching adapters never reloads the base model. The
batcher keeps requests with different adapter sets apart (``lora_key``). The variants of
``models.pipeline_modes`` share the modules, so they see the same adapters.
"""

from __future__ import annotations

from typing import Any

from models.catalog import ModelEntry
from models.checkpoint import UnsafeCheckpoint, sha256_of
from models.kinds.generate import GenerateArgs
from models.predictor import InvalidRequest

LoraKey = tuple[tuple[str, float], ...]


def lora_key(inp: GenerateArgs) -> LoraKey:
    """The request's adapters and scales, in a canonical order (what a batch must share)."""
    return tuple(sorted((c.name, c.scale) for c in inp.loras))


def check_loras(entry: ModelEntry, inp: GenerateArgs, loaded: set[str]) -> None:
    """Refuse adapters the model has not loaded."""
    unknown = sorted({name for name, _ in lora_key(inp)} - loaded)
    if unknown:
        known = sorted(loaded) or "none"
        raise InvalidRequest(f"{entry.name}: unknown LoRA adapters {unknown}; known: {known}")


def load_adapters(pipe: Any, entry: ModelEntry) -> set[str]:
    """Load every adapter the catalog declares into ``pipe``; return their names."""
    from safetensors.torch import load_file

    if entry.loras and not hasattr(pipe, "load_lora_weights"):
        raise ValueError(f"{entry.name}: {type(pipe).__name__} does not take LoRA adapters")
    for name, spec in entry.loras.items():
        if not spec.path.is_file():
            raise FileNotFoundError(f"{entry.name}: LoRA {name!r} weights {spec.path} are missing")
        if spec.sha256 and sha256_of(spec.path) != spec.sha256.lower():
            raise UnsafeCheckpoint(f"{entry.name}: LoRA {name!r} does not match its sha256")
        pipe.load_lora_weights(load_file(str(spec.path)), adapter_name=name)
    if entry.loras:
        pipe.disable_lora()  # the base model until a request chooses adapters
    return set(entry.loras)


def activate(pipe: Any, key: LoraKey, loaded: set[str]) -> None:
    """Make exactly the adapters of ``key`` active at their scales (none: the base model)."""
    if not loaded:
        return
    if not key:
        pipe.disable_lora()
        return
    pipe.enable_lora()
    pipe.set_adapters([name for name, _ in key], adapter_weights=[scale for _, scale in key])
