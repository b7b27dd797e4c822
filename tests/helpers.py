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
