"""Images out of the job store, end to end: outputs and previews in the blob store (a folder
in embedded mode, S3 on a local moto server with Redis), uploads, and deletion."""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from core.store import JobStore
from tests.fixtures import Service, wait_status
from tests.helpers import b64_png
from tests.support.s3 import S3Server, start_s3

pytestmark = pytest.mark.slow
KEYS = "ann:key-ann,bob:key-bob"
PREFIX = "blobs-http"


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    yield from start_s3()


class Stack:
    """A service and what lies behind it: its store and its blobs, for the tests to check."""

    def __init__(self, svc: Service, mode: str, s3: S3Server | None,
                 redirect: Service) -> None:
        self.svc, self.mode, self.s3, self.redirect = svc, mode, s3, redirect

    def ann(self) -> httpx.Client:
        return self.svc.client("key-ann")

    def bob(self) -> httpx.Client:
        return self.svc.client("key-bob")

    def blob_names(self, job_id: str) -> list[str]:
        if self.s3 is not None:
            return self.s3.names(f"{PREFIX}/jobs/{job_id}/")
        root = self.svc.tmp / "data" / "blobs" / "data" / "jobs" / job_id
        return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []

    def store(self) -> JobStore:
        if self.mode == "redis":
            from core.store.redis import RedisStore

            return RedisStore(self.svc.env["CONVOY_REDIS_URL"])
        from core.store.sqlite import SQLiteStore

        return SQLiteStore(self.svc.tmp / "data" / "convoy.db")


@pytest.fixture(scope="module", params=["embedded", "redis"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    """Embedded mode with the folder store; Redis with S3. Each with a second API on the
    same store and blobs, set to answer artifact reads with presigned redirects."""
    from tests.conftest import redis_db_url

    s3: S3Server | None = None
    # no bound from the model's input size: the 15 MB upload feeds a 32x32 classifier
    env: dict[str, str] = {"CONVOY_API_KEYS": KEYS, "CONVOY_INPUT_SCALE": "0"}
    redis_url = None
    if request.param == "redis":
        redis_url = redis_db_url(9)
        s3 = request.getfixturevalue("s3_server")
        env.update(s3.env(PREFIX))
    svc = Service(tmp_path_factory.mktemp(f"blobs-{request.param}"), redis_url, **env)
    redirect = None
    try:
        svc.start_api()
        svc.start_worker(False)
        with svc.client("key-ann") as c:  # /v1/workers needs a key here
            svc._wait(lambda: c.get("/v1/workers").json()["workers"], "worker")
        (svc.tmp / "redirect").mkdir()
        redirect = Service(svc.tmp / "redirect", redis_url, **env,
                           CONVOY_DATA_DIR=str(svc.tmp / "data"),
                           CONVOY_ARTIFACT_REDIRECT="true", CONVOY_PRESIGN_EXPIRY_S="60")
        redirect.start_api()
        yield Stack(svc, request.param, s3, redirect)
    finally:
        if redirect is not None:
            redirect.stop()
        svc.stop()


def generate(**extra: Any) -> dict[str, Any]:
    return {"kind": "generate", "model": "sleepy",
            "input": {"n": 2, "steps": 3, "seed": 11, "preview_every": 1,
                      "prompt": "a red circle", **extra}}


def noise_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, format="PNG",
                                                                           compress_level=1)
    return buf.getvalue()


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_outputs_and_previews_live_in_the_blob_store(stack: Stack) -> None:
    with stack.ann() as c:
        job = c.post("/v1/jobs", json=generate()).json()
        done = wait_status(c, job["id"], ("succeeded", "failed"))
        assert done["status"] == "succeeded", done
        images = done["output"]["images"]
        assert [i["seed"] for i in images] == [11, 12]
        for image in images:
            r = c.get(image["url"])
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            assert len(r.content) == image["bytes"]
            assert hashlib.sha256(r.content).hexdigest() == image["sha256"]
            text = Image.open(io.BytesIO(r.content)).text["parameters"]
            assert text.startswith("a red circle\n") and f"Seed: {image['seed']}" in text
            assert "Steps: 3" in text and "Model: sleepy" in text and "Sampler: dpmpp" in text
        events = stack.store().events(job["id"])
        previews = [e.data for e in events if e.type == "preview"]
        assert len(previews) == 3 and all(p["bytes"] > 0 and p["sha256"] for p in previews)
        assert c.get(previews[0]["url"]).content.startswith(b"\x89PNG")
        assert c.get(f"/v1/jobs/{job['id']}/artifacts/nothing.png").status_code == 404
        with stack.bob() as other:
            assert other.get(images[0]["url"]).status_code == 404
    names = stack.blob_names(job["id"])
    assert {"image-0.png", "image-1.png", "preview-1.png"} <= {n.rsplit("/", 1)[-1]
                                                               for n in names}
    assert stack.store().artifact_names(job["id"]) == []  # no image bytes in the job store


def test_presigned_redirect(stack: Stack) -> None:
    """S3: a redirect to a short-lived presigned URL; a folder has none: the bytes."""
    with stack.ann() as c:
        job = c.post("/v1/jobs", json=generate(n=1, preview_every=0)).json()
        done = wait_status(c, job["id"], ("succeeded", "failed"))
        image = done["output"]["images"][0]
    with stack.redirect.client("key-ann") as c:
        r = c.get(image["url"])
        if stack.s3 is None:
            assert r.status_code == 200 and r.headers["etag"] == f'"{image["sha256"]}"'
            assert hashlib.sha256(r.content).hexdigest() == image["sha256"]
            return
        assert r.status_code == 307, r.text
        location = r.headers["location"]
        assert "X-Amz-Expires=60" in location or "Expires=" in location
        got = httpx.get(location)
        assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == image["sha256"]
    with stack.redirect.client("key-bob") as c:
        assert c.get(image["url"]).status_code == 404


def test_delete_removes_record_events_and_blobs(stack: Stack) -> None:
    with stack.ann() as c:
        image = b64_png(Image.frombytes("RGB", (96, 96), os.urandom(96 * 96 * 3)))
        assert len(image) > 16 * 1024  # moved to the blob store at submission
        done = c.post("/v1/jobs", json={"kind": "classify", "model": "lenet5-digits",
                                        "input": {"image": image}},
                      headers={"Prefer": "wait=30"}).json()
        assert done["status"] == "succeeded", done
        assert done["input"]["image"]["blob"] == f"jobs/{done['id']}/inputs/image"
        made = c.post("/v1/jobs", json=generate()).json()
        wait_status(c, made["id"], ("succeeded",))
        assert stack.blob_names(made["id"]) and stack.blob_names(done["id"])
        with stack.bob() as other:
            assert other.delete(f"/v1/jobs/{made['id']}").status_code == 404
        assert c.get(f"/v1/jobs/{made['id']}").status_code == 200
        for job_id in (made["id"], done["id"]):
            r = c.delete(f"/v1/jobs/{job_id}")
            assert r.status_code == 204, r.text
            assert c.get(f"/v1/jobs/{job_id}").status_code == 404
            assert c.delete(f"/v1/jobs/{job_id}").status_code == 404
            store = stack.store()
            assert store.get(job_id) is None and store.events(job_id) == []
            assert stack.blob_names(job_id) == []
        assert made["id"] not in [j["id"] for j in c.get("/v1/jobs").json()["jobs"]]


def test_delete_cancels_a_running_job_first(stack: Stack) -> None:
    with stack.ann() as c:
        job = c.post("/v1/jobs", json=generate(steps=400, n=1)).json()
        wait_status(c, job["id"], ("running",))
        deadline = time.monotonic() + 30
        while not stack.blob_names(job["id"]) and time.monotonic() < deadline:
            time.sleep(0.05)  # a preview is written
        r = c.delete(f"/v1/jobs/{job['id']}")
        assert r.status_code == 204, r.text
        time.sleep(1.0)  # nothing of the run comes back
        assert c.get(f"/v1/jobs/{job['id']}").status_code == 404
        assert stack.store().get(job["id"]) is None and stack.blob_names(job["id"]) == []


def test_a_15_mb_upload_streams_and_feeds_a_job(stack: Stack) -> None:
    data = noise_png(2300)
    assert len(data) > 15 * 1024 * 1024
    with stack.ann() as c:
        # warm the route up (imports, the parser) before measuring
        small = c.post("/v1/uploads", files={"file": ("s.png", noise_png(8), "image/png")})
        assert small.status_code == 201, small.text
        pid = stack.svc.api.pid  # type: ignore[union-attr]
        before = rss_kib(pid, "VmRSS")
        r = c.post("/v1/uploads", files={"file": ("big.png", io.BytesIO(data), "image/png")})
        assert r.status_code == 201, r.text
        grown = (rss_kib(pid, "VmHWM") - before) * 1024
        assert grown < len(data), f"the API grew by {grown} bytes for a {len(data)}-byte file"
        up = r.json()
        assert (up["bytes"], up["width"], up["height"], up["content_type"]) == (
            len(data), 2300, 2300, "image/png")
        assert up["sha256"] == hashlib.sha256(data).hexdigest()
        assert c.get(f"/v1/uploads/{up['id']}").json() == up
        job = c.post("/v1/jobs", json={"kind": "classify", "model": "lenet5-digits",
                                       "input": {"image": {"upload": up["id"]}, "top_k": 2}},
                     headers={"Prefer": "wait=60"}).json()
        assert job["status"] == "succeeded", job
        assert job["input"]["image"] == {"upload": up["id"]}
        assert len(job["output"]["predictions"]) == 2
    with stack.bob() as other:  # another owner's upload id is refused
        assert other.get(f"/v1/uploads/{up['id']}").status_code == 404
        r = other.post("/v1/jobs", json={"kind": "classify", "model": "lenet5-digits",
                                         "input": {"image": {"upload": up["id"]}}})
        assert r.status_code == 422 and "no upload" in r.json()["error"]["message"]
        assert other.delete(f"/v1/uploads/{up['id']}").status_code == 404
    with stack.ann() as c:
        assert c.delete(f"/v1/uploads/{up['id']}").status_code == 204
        assert c.get(f"/v1/uploads/{up['id']}").status_code == 404


def test_uploads_over_the_limits_or_of_the_wrong_type_are_refused(stack: Stack) -> None:
    gif, bmp_huge = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    Image.new("1", (5000, 5000)).save(bmp_huge, format="PNG")  # small file, 25 Mpixels
    with stack.ann() as c:
        too_big = b"\x89PNG\r\n\x1a\n" + bytes(21 * 1024 * 1024)
        r = c.post("/v1/uploads", files={"file": ("x.png", too_big, "image/png")})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        r = c.post("/v1/uploads", files={"file": ("x.gif", gif.getvalue(), "image/gif")})
        assert r.status_code == 415, r.text
        r = c.post("/v1/uploads", files={"file": ("x.txt", b"hello", "text/plain")})
        assert r.status_code == 422, r.text
        r = c.post("/v1/uploads", files={"file": ("x.png", bmp_huge.getvalue(), "image/png")})
        assert r.status_code == 422 and "pixels" in r.json()["error"]["message"]
        r = c.post("/v1/uploads", json={"file": "no"})
        assert r.status_code == 415
        r = c.post("/v1/uploads", files={"other": ("x.png", b"x", "image/png")})
        assert r.status_code == 422
    with httpx.Client(base_url=stack.svc.url) as anonymous:
        assert anonymous.post("/v1/uploads", files={"file": ("x.png", b"x")}).status_code == 401


def test_sdk_uploads_downloads_and_deletes(stack: Stack, tmp_path: Path) -> None:
    from service.client import Client, NotFound

    picture = tmp_path / "digit.png"
    picture.write_bytes(noise_png(40))
    with Client(stack.svc.url, "key-ann") as sdk, \
            Client(stack.redirect.url, "key-ann") as via_redirect:
        up = sdk.upload(picture)
        assert up.bytes == picture.stat().st_size and (up.width, up.height) == (40, 40)
        job = sdk.run("classify", "lenet5-digits", {"image": {"upload": up.id}}, timeout=60)
        assert job.status == "succeeded"
        made = sdk.run("generate", "sleepy", {"n": 1, "steps": 2, "seed": 4}, timeout=60)
        image = made.output.images[0]  # type: ignore[union-attr]
        assert image.sha256 == hashlib.sha256(sdk.artifact(made.id, image.name)).hexdigest()
        # a redirect to a presigned URL (S3) is followed
        assert via_redirect.artifact(made.id, image.name) == sdk.artifact(made.id, image.name)
        sdk.delete(made.id)
        with pytest.raises(NotFound):
            sdk.get(made.id)
        sdk.delete_upload(up.id)
        with pytest.raises(NotFound):
            sdk.delete_upload(up.id)


def test_uploads_count_against_the_keys_stored_bytes(tmp_path: Path) -> None:
    svc = Service(tmp_path, None, CONVOY_MAX_STORED_BYTES_PER_OWNER="200000")
    one, too_big = noise_png(200), noise_png(290)
    assert 100_000 < len(one) < 200_000 < len(too_big)
    try:
        svc.start_api()
        with svc.client() as c:
            r = c.post("/v1/uploads", files={"file": ("a.png", too_big, "image/png")})
            assert r.status_code == 413 and "bound" in r.json()["error"]["message"]
            assert c.post("/v1/uploads", files={"file": ("b.png", one)}).status_code == 201
            r = c.post("/v1/uploads", files={"file": ("c.png", one, "image/png")})
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
            assert int(r.headers["retry-after"]) >= 1
    finally:
        svc.stop()
