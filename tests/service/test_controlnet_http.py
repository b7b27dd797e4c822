"""ControlNet through the HTTP API (both modes): the tiny Stable Diffusion pipeline with a
tiny ControlNet the tests make (``tiny-sd-control``); the same pipeline without one
(``tiny-sd``) refuses a control image at submission."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image

from tests.fixtures import Service, wait_status
from tests.helpers import b64_png, parse_sse

pytestmark = pytest.mark.slow


def run(c, body: dict, timeout: float = 120) -> dict:  # type: ignore[no-untyped-def]
    r = c.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return wait_status(c, r.json()["id"], ("succeeded", "failed", "canceled"), timeout)


def images(c, job: dict) -> np.ndarray:  # type: ignore[no-untyped-def]
    assert job["status"] == "succeeded", job
    return np.stack([
        np.asarray(Image.open(io.BytesIO(c.get(a["url"]).content)).convert("RGB"),
                   dtype=np.float32) / 255
        for a in job["output"]["images"]])


def edges(seed: int, side: int = 16) -> str:
    """A control image: random white strokes on black, as an edge map would be."""
    rng = np.random.default_rng(seed)
    return b64_png(((rng.random((side, side)) > 0.7) * 255).astype(np.uint8))


def body(model: str = "tiny-sd-control", **extra: object) -> dict:
    return {"kind": "generate", "model": model,
            "input": {"prompt": "a red cat", "n": 2, "seed": 5, "steps": 6,
                      "scheduler": "ddim", **extra}}


def test_control_image_steers_and_the_same_seed_gives_the_same_images(service: Service) -> None:
    with service.client() as c:
        plain = images(c, run(c, body()))
        steered = images(c, run(c, body(control_image=edges(1))))
        again = images(c, run(c, body(control_image=edges(1))))
        other = images(c, run(c, body(control_image=edges(2))))
        off = images(c, run(c, body(control_image=edges(1), control_scale=0)))
    assert steered.shape == plain.shape == (2, 16, 16, 3)
    assert np.abs(steered - plain).mean() > 0.01
    assert np.abs(steered - other).mean() > 0.005  # another control image, another image
    assert np.abs(steered - again).max() <= 2 / 255
    assert np.abs(off - plain).max() <= 2 / 255  # scale 0: the base model's image


def test_control_jobs_in_flight_together_each_get_their_own(service: Service) -> None:
    bodies = [body(control_image=edges(1)), body(control_image=edges(2)), body()]
    with service.client() as c:
        alone = [images(c, run(c, b)) for b in bodies]
        ids = [c.post("/v1/jobs", json=b).json()["id"] for b in bodies * 2]
        together = [images(c, wait_status(c, i, ("succeeded", "failed"), 120)) for i in ids]
    for got, want in zip(together, alone * 2, strict=True):
        assert np.abs(got - want).max() <= 2 / 255


def test_control_jobs_show_previews_and_cancel(service: Service) -> None:
    with service.client() as c:
        job = run(c, body(control_image=edges(3), steps=4, preview_every=2))
        events = parse_sse(c.get(f"/v1/jobs/{job['id']}/events").text)
        kinds = [e["event"] for e in events]
        assert kinds.count("preview") == 2 and kinds.index("preview") < kinds.index("output")
        long = c.post("/v1/jobs", json=body(control_image=edges(4, 64), n=1, steps=50)).json()
        running = wait_status(c, long["id"], ("running",))
        while not (running.get("progress") or {}).get("step"):
            time.sleep(0.02)
            running = c.get(f"/v1/jobs/{long['id']}").json()
        at_cancel = c.post(f"/v1/jobs/{long['id']}/cancel").json()["progress"]["step"]
        done = wait_status(c, long["id"], ("canceled", "succeeded", "failed"))
        assert done["status"] == "canceled"
        events = parse_sse(c.get(f"/v1/jobs/{long['id']}/events").text)
        assert max(e["data"]["step"] for e in events if e["event"] == "progress") <= at_cancel + 2


def test_control_images_are_checked_at_submission(service: Service) -> None:
    not_an_image = base64.b64encode(b"not an image at all").decode()
    with service.client() as c:
        for model, extra, words in (
            ("tiny-sd", {"control_image": edges(1)}, "names no ControlNet"),
            ("tiny-ddpm", {"control_image": edges(1)}, "takes no control_image"),
            ("tiny-sd-control", {"control_image": not_an_image}, "not a readable image"),
            ("tiny-sd-control", {"control_image": edges(1, 80)}, "at most 64 a side"),
            ("tiny-sd-control", {"control_scale": 0.5}, "send one"),
            ("tiny-sd-control", {"control_image": edges(1), "image": edges(2)}, "without image"),
        ):
            b = body(model, **extra)
            if model == "tiny-ddpm":
                b["input"].pop("prompt")
            r = c.post("/v1/jobs", json=b)
            assert r.status_code == 422, (extra.keys(), r.text)
            assert words in r.json()["error"]["message"], r.json()
        listed = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
    assert listed["tiny-sd-control"]["controlnet"] and not listed["tiny-sd"]["controlnet"]
    assert "control_image" in listed["tiny-sd-control"]["inputs"]["generate"]["properties"]
    assert "control_image" not in listed["tiny-sd"]["inputs"]["generate"]["properties"]
