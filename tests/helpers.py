"""Small helpers for tests: images as base64, SSE parsing."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image


def b64_png(image: Image.Image | np.ndarray, fmt: str = "PNG") -> str:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def digit_images(n: int | None = None) -> tuple[list[str], list[int]]:
    """The held-out quarter of the digits as base64 PNGs (as a client would send them)."""
    from models.data.digits import load_digits_split
    from models.images import to_pil

    _, _, x, y = load_digits_split(32)
    if n is not None:
        x, y = x[:n], y[:n]
    return [b64_png(to_pil(img)) for img in x], [int(v) for v in y]


def parse_sse(text: str) -> list[dict[str, Any]]:
    import json

    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "event" in fields:
            events.append({"id": int(fields["id"]), "event": fields["event"],
                           "data": json.loads(fields.get("data", "{}"))})
    return events


def png_close(a: bytes, b: bytes, grey_levels: int = 2) -> bool:
    """Whether two PNGs hold the same picture up to ``grey_levels`` per pixel. Results of
    a forward pass depend in their last bits on the batch it ran in (and on the CPU), which
    may move a pixel across a rounding boundary: never compare PNG bytes across batches."""
    x, y = (np.asarray(Image.open(io.BytesIO(data)), dtype=np.int16) for data in (a, b))
    return x.shape == y.shape and int(np.abs(x - y).max(initial=0)) <= grey_levels


def masks_agree(a: bytes, b: bytes, share: float = 0.99) -> bool:
    """Whether two class-mask PNGs give the same class to at least ``share`` of the pixels
    (an argmax near a tie may flip with the last bits of the logits)."""
    x, y = (np.asarray(Image.open(io.BytesIO(data))) for data in (a, b))
    return x.shape == y.shape and float((x == y).mean()) >= share
