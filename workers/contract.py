"""The job contract: one pydantic input schema per kind, checked against the model's
catalog entry at submission and turned into a predictor ``Request`` input by the worker.

Adding a kind means adding a schema and a ``Kind`` here (and a predictor in models/); the
queue, the store and the routes take it as it is.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from models.catalog import MAX_N, MAX_PROMPT_CHARS, MAX_SIDE, MAX_STEPS, MAX_TOP_K
from models.finetune import FAMILIES, can_finetune
from workers.errors import InvalidInput
from workers.images import decode_image
from workers.user_models import NAME_PATTERN

if TYPE_CHECKING:
    from models.catalog import ModelEntry

SEED_DESCRIPTION = ("makes the job reproducible: the same model, input and seed give the same "
                    "output on the same device type; drawn at random (and shown in the record) "
                    "when absent")


def _seed() -> Any:
    return Field(None, ge=0, lt=2**63, description=SEED_DESCRIPTION, examples=[42])


# An 8x8 white stroke on black, in the PNG format: what the OpenAPI examples send.
EXAMPLE_IMAGE = ("iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAAAAADhZOFXAAAAFklEQVR42mNgQAb/GRgYmGAcYhhwAAA7dgEK"
                 "7tLQGgAAAABJRU5ErkJggg==")
ImageData = Annotated[
    str, Field(description="base64 image (PNG, JPEG, WebP, BMP), optionally as a data: URL; "
               "resized to the model's input size", min_length=1, examples=[EXAMPLE_IMAGE],
               json_schema_extra={"contentEncoding": "base64", "contentMediaType": "image/*"})
]


class UploadRef(BaseModel):
    """An image uploaded before (``POST /v1/uploads``), named by its id."""

    model_config = ConfigDict(extra="forbid")
    upload: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="the id that POST "
                        "/v1/uploads answered (the caller's own, within retention)",
                        examples=["Jx2t0k3mQ1yP9vL8sR4aZc7wE5u"])


Image_ = Annotated[ImageData | UploadRef, Field(
    description="an image: base64 (PNG, JPEG, WebP, BMP; optionally a data: URL), or "
    "{\"upload\": id} naming an upload; resized to the model's input size",
    examples=[EXAMPLE_IMAGE, {"upload": "Jx2t0k3mQ1yP9vL8sR4aZc7wE5u"}])]
FINETUNE_QUEUE = "train"  # finetune jobs' own queue: training never holds up inference
MAX_INTERPOLATION = 64  # points on a VAE interpolation path
MAX_LORAS = 4  # adapters one request may combine
ClassLabel = Annotated[str | None, Field(
    description="class-conditional models: one of the model's labels (GET /v1/models), "
    "always a string (\"7\", not 7)", examples=["7"])]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassifyInput(_Input):
    """``classify``: the top labels of one image."""

    image: Image_
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description="how many labels to return, best "
                       "first (at most the model's limits.max_top_k)", examples=[3])


class SegmentInput(_Input):
    """``segment``: a class index per pixel, as a mask and an overlay."""

    image: Image_


class ReconstructInput(_Input):
    """``reconstruct``: an image through a VAE, with its latent and error."""

    image: Image_


class SampleInput(_Input):
    """``sample``: images from a GAN or a VAE's prior, or a VAE path between two images."""

    n: int = Field(1, ge=1, le=MAX_N, description="images to draw (at most the model's "
                   "limits.max_n)", examples=[4])
    seed: int | None = _seed()
    class_label: ClassLabel = None
    truncation: float = Field(1.0, gt=0, le=10, description="scales the latent; below 1 "
                              "trades variety for typical images", examples=[0.8])
    interpolate_between: list[Image_] | None = Field(
        None, min_length=2, max_length=2, description="VAE only: two images; the output is "
        "the decoded path between their latents", examples=[[EXAMPLE_IMAGE, EXAMPLE_IMAGE]])
    steps: int | None = Field(None, ge=2, le=MAX_INTERPOLATION, description="points on the "
                              "interpolation path (with interpolate_between)", examples=[8])


class LoraChoice(_Input):
    """One LoRA adapter of the model, at a scale."""

    name: str = Field(min_length=1, max_length=200, description="an adapter the catalog "
                      "declares for the model", examples=["ink"])
    scale: float = Field(1.0, ge=-4, le=4, description="0: the base model; 1: the adapter "
                         "as trained", examples=[0.8])


class GenerateInput(_Input):
    """``generate``: images from a diffusion model (class-conditional or a text pipeline)."""

    n: int = Field(1, ge=1, le=MAX_N, description="images to generate (at most the model's "
                   "limits.max_n)", examples=[4])
    seed: int | None = _seed()
    class_label: ClassLabel = None
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description="text "
                               "pipelines: what to draw", examples=["a red circle"])
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS,
                                        description="text pipelines: what to avoid",
                                        examples=["blurry"])
    steps: int = Field(20, ge=1, le=MAX_STEPS, description="denoising steps (at most the "
                       "model's limits.max_steps)", examples=[20])
    scheduler: Literal["ddpm", "ddim", "dpmpp", "euler"] = Field(
        "dpmpp", description="the sampler: DDPM, DDIM, DPM-Solver++ or Euler",
        examples=["dpmpp"])
    guidance_scale: float | None = Field(None, ge=0, le=100, description="classifier-free "
                                         "guidance; the model's default when absent",
                                         examples=[2.0])
    height: int | None = Field(None, ge=8, le=MAX_SIDE, description="pipelines that take a "
                               "size: output height in pixels (at most limits.max_side)",
                               examples=[512])
    width: int | None = Field(None, ge=8, le=MAX_SIDE, description="pipelines that take a "
                              "size: output width in pixels (at most limits.max_side)",
                              examples=[512])
    preview_every: int = Field(0, ge=0, le=MAX_STEPS, description="emit a preview event "
                               "every N steps (0: none)", examples=[5])
    image: Image_ | None = Field(None, description="image-to-image: the image to start from "
                                 "(noised to strength, then denoised to the request)",
                                 examples=[EXAMPLE_IMAGE])
    mask: Image_ | None = Field(None, description="inpainting, with image: the same size as "
                                "image; white pixels are repainted, black ones kept",
                                examples=[EXAMPLE_IMAGE])
    strength: float | None = Field(None, gt=0, le=1, description="with image: how far it is "
                                   "noised (1: all the way); default 0.75 for image-to-image, "
                                   "1.0 for inpainting", examples=[0.6])
    loras: list[LoraChoice] | None = Field(None, max_length=MAX_LORAS, description="diffusers "
                                           "models: LoRA adapters the catalog declares, each "
                                           "with a scale",
                                           examples=[[{"name": "ink", "scale": 0.8}]])


class BuiltinDataset(_Input):
    """A procedural dataset built in (no upload): a draw of ``per_class`` images a class."""

    builtin: Literal["shapes-new", "shapes-outline", "digits-5-9", "digits-0-4"] = Field(
        description="shapes-new: ellipse, cross, crescent, hexagon; shapes-outline: the "
        "four shapes as outlines; digits-5-9 / digits-0-4: scikit-learn's digits",
        examples=["shapes-new"])
    per_class: int = Field(20, ge=1, le=500, description="training images of every class",
                           examples=[20])


class FinetuneInput(_Input):
    """``finetune``: the base model (``model``) with a new head, trained on the dataset and
    served as a new classifier named ``name``, owned by the submitting key."""

    name: str = Field(pattern=NAME_PATTERN, description="the new model's name (never a "
                      "catalog model's; unique among the key's models)",
                      examples=["my-shapes"])
    dataset: UploadRef | BuiltinDataset = Field(
        description="a zip or tar of one folder per class, uploaded with POST /v1/uploads "
        "and named as {\"upload\": id}, or a built-in set, {\"builtin\": name, "
        "\"per_class\": n}",
        examples=[{"builtin": "shapes-new", "per_class": 20}])
    mode: Literal["linear_probe", "finetune", "scratch"] = Field(
        "finetune", description="which weights train (linear_probe: the new head alone, "
        "the backbone frozen; finetune: every layer, the backbone at learning_rate x "
        "backbone_lr_factor; scratch: the same architecture from random weights)",
        examples=["finetune"])
    epochs: int = Field(10, ge=1, le=200, description="passes over the training images",
                        examples=[10])
    batch_size: int = Field(32, ge=1, le=256, description="images per step", examples=[32])
    learning_rate: float = Field(1e-3, ge=1e-6, le=1.0, description="the head's (AdamW)",
                                 examples=[0.001])
    backbone_lr_factor: float = Field(0.1, ge=0.0, le=1.0, description="finetune: the "
                                      "backbone's learning rate over the head's",
                                      examples=[0.1])
    augment: bool = Field(True, description="random shifts, rotations and scaling",
                          examples=[True])
    val_share: float = Field(0.2, ge=0.0, le=0.5, description="share of each class held "
                             "back to validate after every epoch", examples=[0.2])
    early_stopping: int = Field(0, ge=0, le=50, description="stop after this many epochs "
                                "without a better validation accuracy (0: never)",
                                examples=[3])
    seed: int | None = _seed()


class _Job(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200, description="a catalog name "
                       "(GET /v1/models)", examples=["lenet5-digits"])
    id: str | None = Field(None, pattern=r"^[A-Za-z0-9._~-]{1,128}$",
                           description="client-chosen id: makes submission idempotent (the "
                           "same id and body return the existing job; another body, 409)",
                           examples=["my-job-0001"])
    webhook: str | None = Field(None, max_length=2000, description="an http(s) URL that "
                                "receives the job's events as signed POSTs (Standard Webhooks; "
                                "the secret: GET /v1/webhook-secret); private, loopback and "
                                "metadata addresses are refused",
                                examples=["https://example.com/hook"])
    webhook_events: list[Literal["start", "progress", "output", "completed"]] | None = Field(
        None, min_length=1, max_length=4, description="which events the webhook receives "
        "(default: completed)", examples=[["start", "completed"]])
    priority: int = Field(0, ge=0, le=9, description="higher runs first on the model's queue "
                          "(first come first served within one); at most the key's "
                          "max_priority (CONVOY_MAX_PRIORITY, 0 by default)", examples=[0])
    timeout_s: float | None = Field(None, gt=0, description="the job's deadline in seconds "
                                    "from its start (default CONVOY_JOB_TIMEOUT_S; over "
                                    "CONVOY_MAX_JOB_TIMEOUT_S is refused with 422); a job "
                                    "past it fails with code timeout", examples=[60])


def _example(kind: str, model: str, data: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [
        {"kind": kind, "model": model, "input": data}]})


class ClassifyJob(_Job):
    model_config = _example("classify", "lenet5-digits", {"image": EXAMPLE_IMAGE, "top_k": 3})
    kind: Literal["classify"]
    input: ClassifyInput


class SegmentJob(_Job):
    model_config = _example("segment", "unet-shapes", {"image": EXAMPLE_IMAGE})
    kind: Literal["segment"]
    input: SegmentInput


class ReconstructJob(_Job):
    model_config = _example("reconstruct", "vae-digits", {"image": EXAMPLE_IMAGE})
    kind: Literal["reconstruct"]
    input: ReconstructInput


class SampleJob(_Job):
    model_config = _example("sample", "dcgan-digits", {"n": 4, "seed": 42, "class_label": "3"})
    kind: Literal["sample"]
    input: SampleInput


class GenerateJob(_Job):
    model_config = _example("generate", "ddpm-digits", {
        "class_label": "7", "n": 2, "seed": 42, "steps": 10, "scheduler": "dpmpp"})
    kind: Literal["generate"]
    input: GenerateInput


class FinetuneJob(_Job):
    model_config = _example("finetune", "resnet18-shapes", {
        "name": "my-shapes", "dataset": {"builtin": "shapes-new", "per_class": 20},
        "mode": "finetune", "epochs": 10})
    kind: Literal["finetune"]
    input: FinetuneInput


JobRequest = Annotated[
    Union[ClassifyJob, SegmentJob, ReconstructJob, SampleJob, GenerateJob,  # noqa: UP007
          FinetuneJob],
    Field(discriminator="kind"),
]
JOB_REQUEST: TypeAdapter[JobRequest] = TypeAdapter(JobRequest)
IMAGE_FIELDS = ("image", "mask")
INPUTS: dict[str, type[_Input]] = {
    "classify": ClassifyInput, "segment": SegmentInput, "reconstruct": ReconstructInput,
    "sample": SampleInput, "generate": GenerateInput, "finetune": FinetuneInput,
}


@dataclass(frozen=True)
class Limits:
    max_pixels: int


def _label_index(entry: ModelEntry, label: str | None) -> int | None:
    if label is None:
        return None
    if label in entry.labels:
        return entry.labels.index(label)
    raise InvalidInput(
        f"unknown class_label {label!r} for {entry.name}",
        details={"labels": entry.labels},
    )


def pixel_limit(entry: ModelEntry, max_pixels: int, scale: int) -> int:
    """The most pixels an input image of ``entry`` may have: ``scale`` times the model's
    input side each way (a 64x64 model takes up to 1024x1024 at 16), within ``max_pixels``.
    Larger images are refused (422), not resized: the model would shrink them anyway, and
    the client can do it before sending them. ``scale`` 0 leaves only ``max_pixels``."""
    if scale <= 0:
        return max_pixels
    return min(max_pixels, entry.input.height * scale * entry.input.width * scale)


def check(kind: str, data: dict[str, Any], entry: ModelEntry, max_pixels: int,
          uploaded: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """Check a validated input against the model; return the input to store (seed filled)."""
    if kind == "finetune":
        if not can_finetune(entry.family, entry.kinds, entry.weights is not None):
            raise InvalidInput(f"model {entry.name} ({entry.family}) cannot be fine-tuned: "
                               f"bases are classifiers with weights of {', '.join(FAMILIES)}")
        return {**data, "seed": secrets.randbelow(2**31) if data["seed"] is None
                else data["seed"]}
    if kind not in entry.kinds:
        raise InvalidInput(f"model {entry.name} does not serve {kind!r}; it serves {entry.kinds}")
    limits = entry.limits
    decoded = {  # an upload stands in by its size (it was checked when uploaded)
        name: decode_image(data[name], max_pixels, name) if isinstance(data[name], str)
        else SimpleNamespace(size=(uploaded or {}).get(name))
        for name in IMAGE_FIELDS
        if data.get(name) is not None
    }
    if kind == "generate":
        _check_edits(data, decoded, entry)
    for i, value in enumerate(data.get("interpolate_between") or []):
        if isinstance(value, str):
            decode_image(value, max_pixels, f"interpolate_between[{i}]")
    if "top_k" in data and data["top_k"] > limits.max_top_k:
        raise InvalidInput(f"top_k {data['top_k']} is over this model's limit of {limits.max_top_k}")
    if "n" in data and data["n"] > limits.max_n:
        raise InvalidInput(f"n {data['n']} is over this model's limit of {limits.max_n}")
    if kind == "generate" and data["steps"] > limits.max_steps:
        raise InvalidInput(f"steps {data['steps']} is over this model's limit of {limits.max_steps}")
    for side in ("height", "width"):
        if data.get(side) is not None and data[side] > limits.max_side:
            raise InvalidInput(f"{side} {data[side]} is over this model's limit of {limits.max_side}")
    for text in ("prompt", "negative_prompt"):
        if data.get(text) is not None and len(data[text]) > limits.max_prompt_chars:
            raise InvalidInput(
                f"{text} is {len(data[text])} characters, over the limit of {limits.max_prompt_chars}"
            )
    if data.get("class_label") is not None:
        if not entry.labels:
            raise InvalidInput(f"model {entry.name} is not class-conditional: drop class_label")
        _label_index(entry, data["class_label"])
    if "seed" in data and data["seed"] is None:
        data = {**data, "seed": secrets.randbelow(2**31)}
    return data


def _check_edits(data: dict[str, Any], decoded: dict[str, Any], entry: ModelEntry) -> None:
    """Image, mask and adapters of a ``generate`` input against what the model can do."""
    if "mask" in decoded and "image" not in decoded:
        raise InvalidInput("a mask needs the image it applies to: send image as well")
    if "mask" in decoded and decoded["mask"].size != decoded["image"].size:
        (mw, mh), (iw, ih) = decoded["mask"].size, decoded["image"].size
        raise InvalidInput(
            f"the mask is {mw}x{mh} and the image {iw}x{ih}: they must be the same size"
        )
    if data.get("strength") is not None and "image" not in decoded:
        raise InvalidInput("strength applies to image-to-image and inpainting: send an image")
    if "image" in decoded:
        feature = "inpainting" if "mask" in decoded else "image-to-image"
        reason = entry.cannot(feature)
        if reason:
            raise InvalidInput(f"model {entry.name} cannot do {feature}: {reason}")
    chosen = [c["name"] for c in data.get("loras") or []]
    if chosen:
        reason = entry.cannot("lora")
        if reason:
            raise InvalidInput(f"model {entry.name} takes no LoRA adapters: {reason}")
        unknown = sorted(set(chosen) - set(entry.loras))
        if unknown:
            raise InvalidInput(
                f"unknown LoRA adapters {unknown} for {entry.name}",
                details={"loras": sorted(entry.loras)},
            )
        if len(set(chosen)) != len(chosen):
            raise InvalidInput(f"a LoRA adapter is named twice: {chosen}")


def prepare(kind: str, data: dict[str, Any], entry: ModelEntry, max_pixels: int) -> dict[str, Any]:
    """The predictor's view of a stored input: images decoded, labels and seeds resolved."""
    out = dict(data)
    for name in IMAGE_FIELDS:
        if out.get(name) is not None:
            out[name] = decode_image(out[name], max_pixels, name)
    if out.get("interpolate_between"):
        out["interpolate_between"] = [decode_image(v, max_pixels) for v in out["interpolate_between"]]
    if "class_label" in out:
        out["class_index"] = _label_index(entry, out.pop("class_label"))
    if "seed" in out:
        seed = out.pop("seed")
        out["seeds"] = [(seed + i) % 2**63 for i in range(out.get("n", 1))]
    if kind == "generate" and out.get("guidance_scale") is None:
        out["guidance_scale"] = float(entry.config.get("guidance_scale", 3.0))
    return out


def request_hash(body: dict[str, Any]) -> str:
    """What makes two submissions with the same client id the same submission."""
    canon = {k: body.get(k) for k in ("kind", "model", "input", "webhook", "timeout_s")}
    canon.update({k: body[k] for k in ("webhook_events", "priority") if body.get(k)})
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()
