"""The job contract: the job envelope around each kind's input schema (``models/kinds``),
checked against the model's catalog entry at submission and turned into the typed input
its predictor reads (``Args``) by the worker.

Adding a kind means adding its schema file in ``models/kinds`` (and a predictor in models/);
the job union below, the queue, the store and the routes take it as it is.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from models.finetune import FAMILIES, can_finetune
from models.kinds import KIND_SPECS
from models.kinds.classify import ClassifyInput
from models.kinds.common import (
    EXAMPLE_IMAGE,
    IMAGE_FIELDS,
    IMAGE_LISTS,
    Args,
    Input,
    Kind,
    UploadRef,
)
from models.kinds.finetune import FinetuneInput
from models.kinds.generate import GenerateInput, LoraChoice
from models.kinds.reconstruct import ReconstructInput
from models.kinds.sample import SampleInput
from models.kinds.segment import SegmentInput
from workers.errors import InvalidInput
from workers.images import decode_image

if TYPE_CHECKING:
    from models.catalog import ModelEntry

__all__ = [
    "EXAMPLE_IMAGE",
    "FINETUNE_QUEUE",
    "IMAGE_FIELDS",
    "INPUTS",
    "JOB_REQUEST",
    "ClassifyInput",
    "FinetuneInput",
    "GenerateInput",
    "JobRequest",
    "LoraChoice",
    "ReconstructInput",
    "SampleInput",
    "SegmentInput",
    "UploadRef",
    "check",
    "pixel_limit",
    "prepare",
    "request_hash",
]
FINETUNE_QUEUE = "train"  # finetune jobs' own queue: training never holds up inference


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


def _job_class(kind: Kind) -> type[_Job]:
    """``{Kind}Job``: the envelope with ``kind`` fixed and that kind's input."""
    example = {"kind": kind.name, **kind.example}
    return type(f"{kind.name.capitalize()}Job", (_Job,), {
        "__module__": __name__,
        "__annotations__": {"kind": Literal[kind.name], "input": kind.input},
        "model_config": ConfigDict(extra="forbid", json_schema_extra={"examples": [example]}),
    })


JOBS = {name: _job_class(kind) for name, kind in KIND_SPECS.items()}
JobRequest = Annotated[
    Union[tuple(JOBS.values())],  # type: ignore[valid-type]  # noqa: UP007
    Field(discriminator="kind"),
]
JOB_REQUEST: TypeAdapter[Any] = TypeAdapter(JobRequest)
INPUTS: dict[str, type[Input]] = {name: kind.input for name, kind in KIND_SPECS.items()}


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
    for name in IMAGE_LISTS:
        for i, value in enumerate(data.get(name) or []):
            if isinstance(value, str):
                decode_image(value, max_pixels, f"{name}[{i}]")
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
    if data.get("control_scale") is not None and "control_image" not in decoded:
        raise InvalidInput("control_scale applies to a control_image: send one")
    if "control_image" in decoded:
        reason = entry.cannot("controlnet")
        if reason:
            raise InvalidInput(f"model {entry.name} takes no control_image: {reason}")
        if "image" in decoded:
            raise InvalidInput("control_image steers text-to-image: send it without image "
                               "and mask")
        width, height = decoded["control_image"].size or (0, 0)
        side = entry.limits.max_side
        if (data.get("width") is None and width > side) or \
                (data.get("height") is None and height > side):
            raise InvalidInput(f"control_image is {width}x{height}: without height and width "
                               f"it sets the output size, at most {side} a side for this model")


def prepare(kind: str, data: dict[str, Any], entry: ModelEntry, max_pixels: int) -> Args:
    """The predictor's typed input from a stored one: images decoded, the class label as its
    index, one seed per image, the model's default guidance filled in."""
    out = dict(data)
    for name in IMAGE_FIELDS:
        if out.get(name) is not None:
            out[name] = decode_image(out[name], max_pixels, name)
    for name in IMAGE_LISTS:
        if out.get(name):
            out[name] = [decode_image(v, max_pixels, f"{name}[{i}]")
                         for i, v in enumerate(out[name])]
    if "class_label" in out:
        out["class_index"] = _label_index(entry, out.pop("class_label"))
    if "seed" in out:
        seed, n = out.pop("seed"), out.pop("n", 1)
        out["seeds"] = [(seed + i) % 2**63 for i in range(n)]
    if kind == "generate" and out.get("guidance_scale") is None:
        out["guidance_scale"] = float(entry.config.get("guidance_scale", 3.0))
    args = {name: value for name, value in out.items() if value is not None}
    return KIND_SPECS[kind].args.model_validate(args)


def request_hash(body: dict[str, Any]) -> str:
    """What makes two submissions with the same client id the same submission."""
    canon = {k: body.get(k) for k in ("kind", "model", "input", "webhook", "timeout_s")}
    canon.update({k: body[k] for k in ("webhook_events", "priority") if body.get(k)})
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()
