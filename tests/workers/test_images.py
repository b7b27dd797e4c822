"""Where images decode: the API's event loop takes small ones itself and refuses, before
decoding, anything that would take long or wait for the budget."""

from __future__ import annotations

import base64
import io
import threading

import pytest
from PIL import Image

from workers.errors import InvalidInput
from workers.images import (
    INLINE_PIXELS,
    DecodeBudget,
    WouldBlock,
    decode_image,
    small_decodes_only,
)


def png(side: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (10, 200, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_small_images_decode_inline_and_larger_ones_are_refused_undecoded() -> None:
    budget = DecodeBudget(4096 * 4096, 2.0)
    with small_decodes_only():
        assert decode_image(png(64), 1 << 30, budget=budget).size == (64, 64)
        with pytest.raises(WouldBlock):
            decode_image(png(int(INLINE_PIXELS ** 0.5) + 1), 1 << 30, budget=budget)
        with pytest.raises(InvalidInput, match="over the limit"):  # the same answer as ever
            decode_image(png(200), 100 * 100, budget=budget)
    assert budget.peak == 64 * 64  # the large one never held the budget
    assert decode_image(png(200), 1 << 30, budget=budget).size == (200, 200)  # elsewhere: fine


def test_an_inline_decode_never_waits_for_a_budget_in_use() -> None:
    budget = DecodeBudget(100 * 100, None)  # elsewhere a decode would wait as long as it takes
    held, release = threading.Event(), threading.Event()

    def big() -> None:
        with budget.hold(100 * 100):
            held.set()
            release.wait(30)

    t = threading.Thread(target=big)
    t.start()
    held.wait(30)
    try:
        with small_decodes_only(), pytest.raises(WouldBlock):
            decode_image(png(32), 1 << 30, budget=budget)
    finally:
        release.set()
        t.join()
    assert decode_image(png(32), 1 << 30, budget=budget).size == (32, 32)
