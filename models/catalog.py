"""The model catalog: ``models/catalog.toml`` plus the user's files named by ``CONVOY_CATALOG``.

An entry names the kinds it serves, its family (the predictor that serves it), its weights
(a ``.safetensors`` file with a JSON sidecar) or a diffusers pipeline folder, its labels,
input size, queue, batching limits and dtype. Relative paths resolve against the folder of
the catalog file that names them. Reading the catalog never imports torch: the API host
needs only this file and the sidecars.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.kinds import KINDS
from models.kinds.common import MAX_N, MAX_PROMPT_CHARS, MAX_SIDE, MAX_STEPS, MAX_TOP_K

BUILTIN_CATALOG = Path(__file__).with_name("catalog.toml")
Feature = Literal["image-to-image", "inpainting", "lora", "controlnet"]


class ModelNotFound(KeyError):
    """No catalog entry of that name."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown model {self.name!r}"


class InputSpec(BaseModel):
    channels: int = 3
    height: int = 64
    width: int = 64


class Limits(BaseModel):
    """Per-model bounds on job inputs (validated at submission), each at most its ceiling
    (the bound the kinds' schemas publish)."""

    max_n: int = Field(MAX_N, ge=1, le=MAX_N)
    max_steps: int = Field(MAX_STEPS, ge=1, le=MAX_STEPS)
    max_side: int = Field(MAX_SIDE, ge=8, le=MAX_SIDE)  # height/width for pipelines
    max_prompt_chars: int = Field(MAX_PROMPT_CHARS, ge=1, le=MAX_PROMPT_CHARS)
    max_top_k: int = Field(MAX_TOP_K, ge=1, le=MAX_TOP_K)


class LoraSpec(BaseModel):
    """A LoRA adapter of a diffusers model (diffusers/peft format), chosen per request."""

    model_config = ConfigDict(extra="forbid")

    path: Path  # a .safetensors file; relative to the catalog file
    sha256: str | None = None  # checked when the adapter loads

    @field_validator("path")
    @classmethod
    def _safetensors_only(cls, path: Path) -> Path:
        if path.suffix != ".safetensors":
            raise ValueError(f"LoRA weights must be a .safetensors file, got {path.name}")
        return path


# Pipeline classes whose family has image-to-image / inpainting variants that
# diffusers' AutoPipelineFor* build from the same components (``from_pipe``).
IMAGE_TO_IMAGE_PIPELINES = {
    "StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline",
    "FluxPipeline", "LatentConsistencyModelPipeline", "KandinskyV22Pipeline",
}
INPAINTING_PIPELINES = {
    "StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline",
    "FluxPipeline", "KandinskyV22Pipeline",
}
LORA_PIPELINES = {
    "StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline",
    "FluxPipeline", "LatentConsistencyModelPipeline",
}
CONTROLNET_PIPELINES = {"StableDiffusionPipeline", "StableDiffusionXLPipeline"}
PIXEL_PIPELINES = {"DDPMPipeline", "DDIMPipeline"}  # sampled by our own loop


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str
    family: str  # predictor family: lenet5, resnet, unet, vae, dcgan, ddpm, torchvision, diffusers
    kinds: list[str]
    description: str = ""
    weights: Path | None = None  # .safetensors state dict with a JSON sidecar
    path: Path | None = None  # diffusers pipeline folder
    sha256: str | None = None  # checked at load when given
    arch: str | None = None  # torchvision architecture name
    labels: list[str] = Field(default_factory=list)
    input: InputSpec = Field(default_factory=InputSpec)
    queue: str = "convoy"
    max_batch: int = 8
    max_wait_ms: float = 5.0
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    compile: bool = False
    trace: bool = False  # run the forward as one TorchScript call (see models/device.py)
    limits: Limits = Field(default_factory=Limits)
    metrics: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)  # family-specific extras
    source: Path | None = None  # the catalog file that defined the entry
    loras: dict[str, LoraSpec] = Field(default_factory=dict)  # adapters requests may choose
    inpaint_path: Path | None = None  # diffusers inpainting pipeline folder for masks
    controlnet_path: Path | None = None  # diffusers ControlNetModel folder: control_image

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str]) -> list[str]:
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown kinds {unknown}; known: {list(KINDS)}")
        return kinds

    @property
    def sidecar(self) -> dict[str, Any]:
        if self.weights is None:
            return {}
        path = self.weights.with_suffix(".json")
        return json.loads(path.read_text()) if path.exists() else {}

    def pipeline_class(self) -> str | None:
        """The diffusers pipeline class its folder names (read from model_index.json)."""
        index = self.path / "model_index.json" if self.path is not None else None
        if index is None or not index.is_file():
            return None
        name = json.loads(index.read_text()).get("_class_name")
        return name if isinstance(name, str) else None

    def cannot(self, feature: Feature) -> str | None:
        """Why this model cannot do ``feature``, or None when it can."""
        if self.family == "ddpm":
            if feature == "controlnet":
                return "it samples with its own loop, which takes no ControlNet"
            return "it has no adapters" if feature == "lora" else None
        if self.family != "diffusers":
            return f"the {self.family} family generates from noise only"
        pipeline = self.pipeline_class()
        if feature == "controlnet":
            if self.controlnet_path is None:
                return "the catalog names no ControlNet for it (controlnet_path)"
            ok = pipeline in CONTROLNET_PIPELINES
            return None if ok else f"{pipeline} has no ControlNet variant"
        if feature == "lora":
            if not self.loras:
                return "the catalog declares no adapters for it"
            ok = pipeline in LORA_PIPELINES
        elif feature == "inpainting":
            ok = self.inpaint_path is not None or pipeline in INPAINTING_PIPELINES | PIXEL_PIPELINES
        else:
            ok = pipeline in IMAGE_TO_IMAGE_PIPELINES | PIXEL_PIPELINES
        return None if ok else f"{pipeline} has no {feature} variant"

    def public(self) -> dict[str, Any]:
        """The entry as ``GET /v1/models`` shows it."""
        return {
            "name": self.name,
            "kinds": self.kinds,
            "family": self.family,
            "labels": self.labels,
            "input": self.input.model_dump(),
            "description": self.description,
            "metrics": self.metrics,
            "queue": self.queue,
            "max_batch": self.max_batch,
            "limits": self.limits.model_dump(),
            "loras": sorted(self.loras),
            "controlnet": self.cannot("controlnet") is None,
        }


def _resolve(base: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _entry(name: str, raw: dict[str, Any], source: Path) -> ModelEntry:
    raw = dict(raw)
    base = source.parent
    weights = _resolve(base, raw.pop("weights", None))
    path = _resolve(base, raw.pop("path", None))
    for key in ("inpaint_path", "controlnet_path"):
        if raw.get(key) is not None:
            raw[key] = _resolve(base, raw[key])
    raw["loras"] = {
        key: {**spec, "path": _resolve(base, spec.get("path"))} if isinstance(spec, dict) else spec
        for key, spec in (raw.get("loras") or {}).items()
    }
    labels = raw.pop("labels", None)
    sidecar: dict[str, Any] = {}
    if weights is not None and weights.with_suffix(".json").exists():
        sidecar = json.loads(weights.with_suffix(".json").read_text())
    if isinstance(labels, str):  # a labels file, one per line
        labels_path = _resolve(base, labels)
        assert labels_path is not None
        labels = [s.strip() for s in labels_path.read_text().splitlines() if s.strip()]
    if labels is None:
        labels = sidecar.get("labels", [])
    if raw.get("family") == "torchvision" and "input" not in raw:  # the architecture's crop
        side = 299 if raw.get("arch") == "inception_v3" else 224
        raw["input"] = {"channels": 3, "height": side, "width": side}
    raw.setdefault("input", sidecar.get("input", {}))
    raw.setdefault("metrics", sidecar.get("metrics", {}))
    return ModelEntry(
        name=name, weights=weights, path=path, labels=labels, source=source, **raw
    )


class Catalog:
    """Entries by name; later files override earlier ones of the same name."""

    def __init__(self, entries: dict[str, ModelEntry]) -> None:
        self.entries = entries

    @classmethod
    def load(cls, extra: list[Path] | None = None, builtin: bool = True) -> Catalog:
        files = ([BUILTIN_CATALOG] if builtin else []) + list(extra or [])
        entries: dict[str, ModelEntry] = {}
        for file in files:
            file = Path(file).resolve()
            if not file.exists():
                raise FileNotFoundError(f"catalog file {file} does not exist")
            data = tomllib.loads(file.read_text())
            for name, raw in data.get("models", {}).items():
                weights = raw.get("weights") and _resolve(file.parent, raw["weights"])
                # A built-in whose weights are not trained yet is skipped, not fatal.
                if weights and not weights.exists() and file == BUILTIN_CATALOG.resolve():
                    continue
                entries[name] = _entry(name, raw, file)
        return cls(entries)

    def get(self, name: str) -> ModelEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise ModelNotFound(name) from None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)
