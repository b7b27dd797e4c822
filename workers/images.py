"""Decoding client images safely: base64, a format allowlist, a pixel bound read from the
header before any pixel is decoded."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image

from workers.errors import InvalidInput, UnsupportedMediaType

ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP", "BMP"}
_DATA_URL = re.compile(r"^data:([\w/+.-]+);base64,", re.IGNORECASE)
Image.MAX_IMAGE_PIXELS = None  # we bound pixels ourselves, with a clear error


def decode_image(value: str, max_pixels: int, field: str = "image") -> Image.Image:
    """A fully decoded PIL image from a base64 string (optionally a data URL).

    Raises InvalidInput for bad base64, unreadable or truncated data and images over
    ``max_pixels``; UnsupportedMediaType for a recognised format outside the allowlist.
    """
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a base64 string")
    match = _DATA_URL.match(value)
    if match:
        value = value[match.end():]
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{field} is not valid base64") from None
    if data.startswith(b"%PDF") or data.startswith(b"GIF8") or data[:4] in (b"II*\x00", b"MM\x00*"):
        raise UnsupportedMediaType(
            f"{field}: this format is not accepted; send {', '.join(sorted(ALLOWED_FORMATS))}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=None)
    except Exception:
        raise InvalidInput(f"{field} is not a readable image") from None
    if image.format not in ALLOWED_FORMATS:
        raise UnsupportedMediaType(
            f"{field}: {image.format} is not accepted; send "
            f"{', '.join(sorted(ALLOWED_FORMATS))}"
        )
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidInput(
            f"{field} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
        )
    try:
        image.load()
    except Exception:
        raise InvalidInput(f"{field} is truncated or corrupt") from None
    return image
