"""Decoding client images safely: base64, a format allowlist, a pixel bound read from the
header before any pixel is decoded, and a per-process budget of pixels being decoded at once.

A lossless WebP or PNG of flat colour declaring 4096x4096 is under 1 KB and decodes to 48 MB
(more with the copies made on the way): the header bound alone lets sixteen such requests
in flight take gigabytes. The budget makes the decodes past it wait their turn (and the API
answers 503 with Retry-After when the wait is over ``wait_s``).

The API's event loop decodes small images itself (``small_decodes_only``): handing a
thumbnail to a worker thread and back costs more CPU than decoding it. Anything larger, or
anything that would wait for the budget, raises ``WouldBlock`` there instead, and goes to a
worker thread.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image

from core.errors import InvalidInput, Unavailable, UnsupportedMediaType

ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP", "BMP"}
INLINE_PIXELS = 128 * 128  # decodes in a fraction of a millisecond: fine on the event loop
_DATA_URL = re.compile(r"^data:([\w/+.-]+);base64,", re.IGNORECASE)
Image.MAX_IMAGE_PIXELS = None  # we bound pixels ourselves, with a clear error


class WouldBlock(Exception):
    """A decode under ``small_decodes_only`` would take long or wait for the budget."""


_small = threading.local()


@contextmanager
def small_decodes_only() -> Iterator[None]:
    """On this thread, within the block, decode only images of at most INLINE_PIXELS that
    need not wait for the budget; raise WouldBlock for any other (before decoding it)."""
    _small.on = True
    try:
        yield
    finally:
        _small.on = False


class DecodeBudget:
    """Pixels being decoded at once in this process, up to ``pixels``. One image over the
    whole budget still decodes, alone."""

    def __init__(self, pixels: int, wait_s: float | None) -> None:
        self.pixels = pixels
        self.wait_s = wait_s  # None: wait as long as it takes (workers)
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def configure(self, pixels: int, wait_s: float | None) -> None:
        with self._cond:
            self.pixels, self.wait_s = pixels, wait_s
            self._cond.notify_all()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Hold ``pixels`` of the budget; Unavailable when it stays taken past ``wait_s``."""
        with self._cond:
            if self.used and self.used + pixels > self.pixels and getattr(_small, "on", False):
                raise WouldBlock("the decode budget is in use")
            deadline = None if self.wait_s is None else time.monotonic() + self.wait_s
            while self.used and self.used + pixels > self.pixels:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise Unavailable("the server is decoding too many images at once; "
                                      "try again shortly", retry_after=max(1.0, self.wait_s or 1))
                self._cond.wait(left)
            self.used += pixels
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= pixels
                self._cond.notify_all()


# The process's budget: the API and the worker configure it from their settings at start.
DECODE_BUDGET = DecodeBudget(4096 * 4096, 2.0)


def _open(data: bytes, formats: set[str] | None) -> Image.Image | None:
    """The image's header read by the decoders of ``formats`` (None: any), or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Image.open(io.BytesIO(data), formats=None if formats is None
                              else sorted(formats))
    except Exception:  # noqa: BLE001  (no decoder of these formats reads it)
        return None


def decode_image(value: str, max_pixels: int, field: str = "image",
                 budget: DecodeBudget | None = None) -> Image.Image:
    """A fully decoded PIL image from a base64 string (optionally a data URL).

    Raises InvalidInput for bad base64, unreadable or truncated data and images over
    ``max_pixels``; UnsupportedMediaType for a recognised format outside the allowlist;
    Unavailable when the decode budget (``DECODE_BUDGET`` by default) stays taken.
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
    image = _open(data, ALLOWED_FORMATS)  # the formats served: no other decoder is tried
    if image is None:
        image = _open(data, None)  # a format not served (415), or not an image (422)
    if image is None:
        raise InvalidInput(f"{field} is not a readable image")
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
    if width * height > INLINE_PIXELS and getattr(_small, "on", False):
        raise WouldBlock(f"{field} is too large to decode here")
    with (budget or DECODE_BUDGET).hold(width * height):
        try:
            image.load()
        except Exception:
            raise InvalidInput(f"{field} is truncated or corrupt") from None
    return image
