"""What every kind's schema is made of: the limits' ceilings, image and seed fields, and the
two bases, ``Input`` (the job's JSON as a client sends it) and ``Args`` (the same job as a
predictor reads it: images decoded, a class as its index, one seed per image).

No torch here: the API host imports these schemas too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

# The ceilings of every model's limits (``models.catalog.Limits``); the schemas publish them
# as their bounds, so the OpenAPI document never promises more than any model allows.
MAX_N = 16
MAX_STEPS = 1000
MAX_SIDE = 1024
MAX_PROMPT_CHARS = 1000
MAX_TOP_K = 100

SEED_DESCRIPTION = ("makes the job reproducible: the same model, input and seed give the same "
                    "output on the same device type; drawn at random (and shown in the record) "
                    "when absent")


def seed_field() -> Any:
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


ImageIn = Annotated[ImageData | UploadRef, Field(
    description="an image: base64 (PNG, JPEG, WebP, BMP; optionally a data: URL), or "
    "{\"upload\": id} naming an upload; resized to the model's input size",
    examples=[EXAMPLE_IMAGE, {"upload": "Jx2t0k3mQ1yP9vL8sR4aZc7wE5u"}])]
ClassLabel = Annotated[str | None, Field(
    description="class-conditional models: one of the model's labels (GET /v1/models), "
    "always a string (\"7\", not 7)", examples=["7"])]
# Image fields of any kind's input: stored by reference, decoded before the predictor runs.
IMAGE_FIELDS = ("image", "mask", "control_image")
IMAGE_LISTS = ("interpolate_between",)


class Input(BaseModel):
    """A kind's input as the client sends it and the store keeps it (JSON)."""

    model_config = ConfigDict(extra="forbid")


class Args(BaseModel):
    """A kind's input as its predictor reads it (``Request.input``): built by the worker
    from the stored input, after the catalog checks; images are ``PIL.Image``."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    @property
    def n(self) -> int:
        """Images the request asks for (what its share of a batch's time is weighed by)."""
        return 1


Picture = Image.Image
Seeds = Annotated[list[int], Field(min_length=1, description="one per image, in order")]


@dataclass(frozen=True)
class Kind:
    """A job kind: what its module in ``models/kinds`` defines as ``KIND``."""

    name: str
    input: type[Input]  # the JSON a client sends
    args: type[Args]  # what the predictor reads
    example: dict[str, Any]  # {"model": ..., "input": ...}: the OpenAPI example
