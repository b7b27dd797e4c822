"""Every job kind through the HTTP API, on tiny models the tests build themselves."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image

from tests.fixtures import Service, wait_status
from tests.helpers import b64_png, parse_sse, png_close

pytestmark = pytest.mark.slow


def run(c, body: dict, timeout: float = 120) -> dict:  # type: ignore[no-untyped-def]
    r = c.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return wait_status(c, r.json()["id"], ("succeeded", "failed", "canceled"), timeout)


def png(c, art: dict) -> Image.Image:  # type: ignore[no-untyped-def]
    r = c.get(art["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(r.content))


def rgb(w: int, h: int, seed: int = 0) -> str:
    return b64_png(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def gray(w: int, h: int, seed: int = 0) -> str:
    return b64_png(np.random.default_rng(seed).integers(0, 255, (h, w), dtype=np.uint8))


def test_segment_returns_a_mask_of_the_input_size(service: Service) -> None:
    with service.client() as c:
        for image, size in ((rgb(50, 40), (50, 40)), (gray(20, 30), (20, 30))):
            job = run(c, {"kind": "segment", "model": "tiny-unet", "input": {"image": image}})
            assert job["status"] == "succeeded", job
            out = job["output"]
            mask = png(c, out["mask"])
            assert mask.mode == "L" and mask.size == size
            assert int(np.asarray(mask).max()) <= 4
            assert png(c, out["overlay"]).size == size
            classes = out["classes"]
            assert [k["label"] for k in classes][:5] == ["background", "circle", "square",
                                                        "triangle", "star"]
            assert sum(k["pixels"] for k in classes) == size[0] * size[1]
            assert abs(sum(k["fraction"] for k in classes) - 1.0) < 1e-6
            assert all(k["colour"].startswith("#") for k in classes)  # the legend's colours


def test_reconstruct_converts_channels_and_sizes(service: Service) -> None:
    with service.client() as c:
        for model, image in (("tiny-vae-rgb", gray(40, 24)), ("tiny-vae-gray", rgb(10, 10))):
            job = run(c, {"kind": "reconstruct", "model": model, "input": {"image": image}})
            assert job["status"] == "succeeded", job
            out = job["output"]
            assert len(out["latent"]) == 4 and out["mse"] >= 0 and out["psnr"] > 0
            assert png(c, out["reconstruction"]).size == (16, 16)


def test_sample_is_reproducible_by_seed(service: Service) -> None:
    with service.client() as c:
        a = run(c, {"kind": "sample", "model": "tiny-vae-rgb", "input": {"n": 3, "seed": 5}})
        b = run(c, {"kind": "sample", "model": "tiny-vae-rgb", "input": {"n": 1, "seed": 6}})
        assert [i["seed"] for i in a["output"]["images"]] == [5, 6, 7]
        assert png_close(c.get(a["output"]["images"][1]["url"]).content,
                         c.get(b["output"]["images"][0]["url"]).content)


def test_non_image_payloads_are_refused(service: Service) -> None:
    with service.client() as c:
        for body in (
            {"kind": "segment", "model": "tiny-unet",
             "input": {"image": base64.b64encode(b"hello, not an image").decode()}},
            {"kind": "reconstruct", "model": "tiny-vae-rgb", "input": {"image": "%%%"}},
            {"kind": "segment", "model": "tiny-vae-rgb", "input": {"image": rgb(8, 8)}},
        ):
            r = c.post("/v1/jobs", json=body)
            assert r.status_code == 422, r.text
            assert r.json()["error"]["code"] == "invalid_input"


def test_torchvision_entry_classifies(service: Service) -> None:
    with service.client() as c:
        job = run(c, {"kind": "classify", "model": "tv-resnet18",
                      "input": {"image": rgb(100, 80), "top_k": 2}})
        assert job["status"] == "succeeded", job
        preds = job["output"]["predictions"]
        assert len(preds) == 2 and {p["label"] for p in preds} <= {"cat", "dog", "bird"}


def test_text_to_image_with_previews_and_seeds(service: Service) -> None:
    body = {"kind": "generate", "model": "tiny-sd",
            "input": {"prompt": "a red cat", "n": 2, "seed": 11, "steps": 4,
                      "scheduler": "ddim", "preview_every": 1, "height": 16, "width": 16}}
    with service.client() as c:
        first = c.post("/v1/jobs", json=body).json()
        events = parse_sse(c.get(f"/v1/jobs/{first['id']}/events").text)
        kinds = [e["event"] for e in events]
        assert events[-1]["data"] == {"status": "succeeded"}, events[-3:]
        assert "preview" in kinds and kinds.index("preview") < kinds.index("output")
        images = next(e for e in events if e["event"] == "output")["data"]["images"]
        assert [i["seed"] for i in images] == [11, 12]
        again = run(c, body)
        assert [c.get(i["url"]).content for i in images] == \
            [c.get(i["url"]).content for i in again["output"]["images"]]


def test_unconditional_pipeline_and_cancel_mid_run(service: Service) -> None:
    with service.client() as c:
        job = run(c, {"kind": "generate", "model": "tiny-ddpm",
                      "input": {"n": 1, "seed": 1, "steps": 3, "scheduler": "euler"}})
        assert job["status"] == "succeeded", job
        assert png(c, job["output"]["images"][0]).size == (16, 16)
        long = c.post("/v1/jobs", json={"kind": "generate", "model": "tiny-sd",
                                         "input": {"prompt": "a dog", "steps": 50,
                                                   "height": 64, "width": 64}}).json()
        running = wait_status(c, long["id"], ("running",))
        while not (running.get("progress") or {}).get("step"):
            time.sleep(0.02)
            running = c.get(f"/v1/jobs/{long['id']}").json()
        at_cancel = c.post(f"/v1/jobs/{long['id']}/cancel").json()["progress"]["step"]
        done = wait_status(c, long["id"], ("canceled", "succeeded", "failed"))
        assert done["status"] == "canceled"
        events = parse_sse(c.get(f"/v1/jobs/{long['id']}/events").text)
        last_step = max(e["data"]["step"] for e in events if e["event"] == "progress")
        assert last_step <= at_cancel + 2  # stopped within two steps of the cancel


def test_pickle_only_pipeline_is_refused(service: Service) -> None:
    with service.client() as c:
        job = run(c, {"kind": "generate", "model": "pickle-only", "input": {"steps": 2}})
        assert job["status"] == "failed"
        assert job["error"]["code"] == "invalid_input"
        assert "safetensors" in job["error"]["message"]
