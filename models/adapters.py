"""LoRA adapters and image-to-image / inpainting variants of a loaded diffusers pipeline.

Adapters are declared per model in the catalog (``[models.NAME.loras.ADAPTER]`` with a
``.safetensors`` path and an optional sha256). All of them load once, into the base
pipeline's own modules (peft layers beside the base weights), under their catalog names;
a request chooses some with a scale, and a call activates exactly those (``set_adapters``)
or none (``disable_lora``), so switching adapters never reloads the base model. The
batcher keeps requests with different adapter sets apart (``lora_key``).

Variants come from diffusers' ``AutoPipelineForImage2Image`` / ``AutoPipelineForInpainting``
``from_pipe``: new pipeline objects over the very same modules, so they cost no memory.
An inpainting checkpoint the catalog names (``inpaint_path``) loads as a pipeline of its
own, sharing what it can (the text encoder, the tokenizer, the VAE).
"""

from __future__ import annotations

from typing import Any

from models.catalog import ModelEntry
from models.checkpoint import UnsafeCheckpoint, sha256_of
from models.predictor import InvalidRequest

LoraKey = tuple[tuple[str, float], ...]


def lora_key(inp: dict[str, Any]) -> LoraKey:
    """The request's adapters and scales, in a canonical order (what a batch must share)."""
    chosen = inp.get("loras") or []
    return tuple(sorted((str(c["name"]), float(c.get("scale", 1.0))) for c in chosen))


def check_loras(entry: ModelEntry, inp: dict[str, Any], loaded: set[str]) -> None:
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


def variant(pipe: Any, mode: str, entry: ModelEntry, cache: dict[str, Any]) -> Any:
    """The pipeline for ``mode`` ("text", "image", "inpaint"), built once and cached."""
    if mode == "text":
        return pipe
    if mode in cache:
        return cache[mode]
    from diffusers import (
        AutoPipelineForImage2Image,
        AutoPipelineForInpainting,
        DiffusionPipeline,
    )

    try:
        if mode == "image":
            built = AutoPipelineForImage2Image.from_pipe(pipe)
        elif entry.inpaint_path is not None:
            from models.pipelines import check_pipeline_folder

            check_pipeline_folder(entry.inpaint_path)
            shared = {
                k: v for k, v in pipe.components.items()
                if k in ("text_encoder", "tokenizer", "vae", "text_encoder_2", "tokenizer_2")
            }
            built = DiffusionPipeline.from_pretrained(
                entry.inpaint_path,
                use_safetensors=True,
                local_files_only=True,
                trust_remote_code=False,
                **shared,
            ).to(pipe.device)
        else:
            built = AutoPipelineForInpainting.from_pipe(pipe)
    except ValueError as err:
        raise InvalidRequest(f"{entry.name} cannot do {mode} generation: {err}") from err
    built.set_progress_bar_config(disable=True)
    cache[mode] = built
    return built
