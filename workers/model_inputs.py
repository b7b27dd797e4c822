"""Each kind's input schema as one model serves it, for forms that build themselves.

The kinds' schemas (``models/kinds``) hold what any model of a kind may take;
a model takes less: its own limits bound ``n``, ``steps`` and ``top_k``, its labels are the
only classes, and a field it would refuse (a prompt to a class-conditional model, a class
to an unconditional one, an interpolation path to a model with no encoder) is left out.
``GET /v1/models`` lists these schemas so that a client (the web studio among them) needs no
hand-kept list of fields. The rules read the catalog entry only: no torch on the API host.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from models.finetune import can_finetune
from models.kinds.generate import LoraChoice
from workers.contract import INPUTS

if TYPE_CHECKING:
    from models.catalog import ModelEntry


def takes_prompt(entry: ModelEntry) -> bool:
    """A diffusers pipeline folder with a text encoder takes prompts (text-to-image)."""
    if entry.family != "diffusers" or entry.path is None:
        return False
    index = entry.path / "model_index.json"
    try:
        spec = json.loads(index.read_text())
    except (OSError, ValueError):
        return False
    value = spec.get("text_encoder")
    return isinstance(value, list) and value[0] is not None


def _flat(prop: dict[str, Any]) -> dict[str, Any]:
    """``anyOf: [X, null]`` (an optional field) as X with ``nullable``."""
    branches = prop.get("anyOf")
    if not branches:
        return dict(prop)
    kept = [b for b in branches if b.get("type") != "null"]
    if len(kept) != 1:
        return dict(prop)
    out = {k: v for k, v in prop.items() if k != "anyOf"}
    return {**kept[0], **out, "nullable": True}


def _base64_images(prop: dict[str, Any]) -> dict[str, Any]:
    """An image as a form sends it, base64: the ``{"upload": id}`` branch left out."""
    branches = prop.get("anyOf")
    if branches:
        kept = [_base64_images(b) for b in branches
                if not str(b.get("$ref", "")).endswith("/UploadRef")]
        rest = {k: v for k, v in prop.items() if k != "anyOf"}
        prop = {**kept[0], **rest} if len(kept) == 1 else {**rest, "anyOf": kept}
    if isinstance(prop.get("items"), dict):
        prop = {**prop, "items": _base64_images(prop["items"])}
    return prop


def _drop(kind: str, entry: ModelEntry) -> set[str]:
    prompt = takes_prompt(entry)
    dropped: set[str] = set()
    if not entry.labels:
        dropped.add("class_label")
    if kind == "generate" and not prompt:
        dropped |= {"prompt", "negative_prompt", "height", "width"}
    if kind == "generate" and not prompt and not entry.labels:
        dropped.add("guidance_scale")  # nothing to guide towards
    if kind == "sample" and "reconstruct" not in entry.kinds:  # no encoder: no path
        dropped |= {"interpolate_between", "steps"}
    if kind == "generate":
        if entry.cannot("image-to-image") and entry.cannot("inpainting"):
            dropped |= {"image", "strength"}
        if entry.cannot("inpainting"):
            dropped.add("mask")
        if entry.cannot("lora"):
            dropped.add("loras")
        if entry.cannot("controlnet"):
            dropped |= {"control_image", "control_scale"}
    return dropped


def _bound(kind: str, name: str, prop: dict[str, Any], entry: ModelEntry) -> dict[str, Any]:
    limits = entry.limits
    if name == "n":
        prop["maximum"] = min(prop.get("maximum", limits.max_n), limits.max_n)
    elif name == "steps" and kind == "generate":
        prop["maximum"] = min(prop.get("maximum", limits.max_steps), limits.max_steps)
    elif name == "top_k":
        top = min(limits.max_top_k, len(entry.labels) or limits.max_top_k)
        prop["maximum"] = top
        prop["default"] = min(prop.get("default", 5), top)
    elif name in ("height", "width"):
        prop["maximum"] = min(prop.get("maximum", limits.max_side), limits.max_side)
    elif name in ("prompt", "negative_prompt"):
        prop["maxLength"] = min(prop.get("maxLength", limits.max_prompt_chars),
                                limits.max_prompt_chars)
    elif name == "class_label":
        prop["enum"] = list(entry.labels)
    elif name == "loras" and isinstance(prop.get("items"), dict):
        prop["items"] = _lora_choice(entry)
    elif name == "dataset" and kind == "finetune":
        prop = _dataset(prop)
    elif name == "guidance_scale" and "guidance_scale" in entry.config:
        prop["default"] = float(entry.config["guidance_scale"])
    return prop


def _lora_choice(entry: ModelEntry) -> dict[str, Any]:
    """One adapter choice, its name one of the model's adapters (inlined: no ``$ref``)."""
    schema = LoraChoice.model_json_schema()
    schema["properties"]["name"]["enum"] = sorted(entry.loras)
    return schema


def kind_schema(kind: str, entry: ModelEntry) -> dict[str, Any]:
    """The JSON schema of ``kind``'s input for this model (no ``$ref``, optional fields
    flattened with ``nullable``)."""
    schema = INPUTS[kind].model_json_schema()
    dropped = _drop(kind, entry)
    props = {name: _bound(kind, name, _flat(_base64_images(prop)), entry)
             for name, prop in schema["properties"].items() if name not in dropped}
    if kind == "generate" and takes_prompt(entry):
        schema.setdefault("required", []).append("prompt")
    return {
        "title": schema.get("title", kind),
        "type": "object",
        "properties": props,
        "required": [r for r in schema.get("required", []) if r in props],
    }


def _dataset(prop: dict[str, Any]) -> dict[str, Any]:
    """A finetune dataset as a form offers it (``format: convoy-dataset``): a built-in set
    of ``builtins`` by name, or an archive file that the form uploads first."""
    from models.finetune.datasets import BUILTIN

    return {"title": "Dataset", "type": "object", "format": "convoy-dataset",
            "builtins": sorted(BUILTIN), "description": prop.get("description", ""),
            "examples": prop.get("examples", [])}


def model_inputs(entry: ModelEntry) -> dict[str, dict[str, Any]]:
    """Every kind this model serves (that has an input schema) with its schema; a
    classifier that can be a base has ``finetune`` too."""
    kinds = [kind for kind in entry.kinds if kind in INPUTS]
    if can_finetune(entry.family, entry.kinds, entry.weights is not None):
        kinds.append("finetune")
    return {kind: kind_schema(kind, entry) for kind in kinds}
