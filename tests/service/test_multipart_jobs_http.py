"""``POST /v1/jobs`` as multipart/form-data: the request in the part ``job`` and its images
as file parts it names (``{"file": "NAME"}``), stored as the job's own uploads; in
embedded mode and with Redis."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.blobs import FolderBlobs
from core.store import JobStore
from tests.fixtures import Service
from tests.helpers import digit_images
from tests.service.test_faults import store_of

pytestmark = pytest.mark.slow


class Stack:
    def __init__(self, svc: Service, store: JobStore) -> None:
        self.svc, self.store = svc, store
        self.blobs = FolderBlobs(svc.tmp / "data" / "blobs")

    def uploads(self) -> list[str]:
        return sorted(b.key for b in self.blobs.entries("uploads/"))


@pytest.fixture(scope="module", params=["embedded", "redis"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    from tests.conftest import redis_db_url

    redis_url = redis_db_url(7) if request.param == "redis" else None
    svc = Service(tmp_path_factory.mktemp(f"multipart-{request.param}"), redis_url,
                  CONVOY_API_KEYS="ann:key-ann,bob:key-bob")
    try:
        svc.start_api()
        svc.start_worker(False)
        with svc.client("key-ann") as c:  # /v1/workers needs a key here
            svc._wait(lambda: c.get("/v1/workers").json()["workers"], "worker")
        store = store_of(svc)
        yield Stack(svc, store)
    finally:
        svc.stop()


IMAGES, LABELS = digit_images(3)
PNGS = [base64.b64decode(b) for b in IMAGES]


def submit(c: httpx.Client, job: dict[str, Any] | str, files: dict[str, bytes],
           wait: int = 0) -> httpx.Response:
    text = job if isinstance(job, str) else json.dumps(job)
    parts = [("job", (None, text, "application/json")),
             *((name, (f"{name}.png", data, "image/png")) for name, data in files.items())]
    return c.post("/v1/jobs", files=parts, headers={"Prefer": f"wait={wait}"} if wait else {})


def classify(**extra: Any) -> dict[str, Any]:
    return {"kind": "classify", "model": "lenet5-digits",
            "input": {"image": {"file": "digit"}, "top_k": 1}, **extra}


def test_a_job_and_its_files_in_one_request(stack: Stack) -> None:
    with stack.svc.client("key-ann") as ann, stack.svc.client("key-bob") as bob:
        before = stack.store.stored_bytes("ann")
        r = submit(ann, classify(), {"digit": PNGS[0]}, wait=30)
        assert r.status_code == 200, r.text
        job = r.json()
        assert job["status"] == "succeeded"
        assert job["output"]["predictions"][0]["label"] == str(LABELS[0])
        upload = job["input"]["image"]["upload"]  # the record names the stored file
        assert ann.get(f"/v1/uploads/{upload}").json()["bytes"] == len(PNGS[0])
        assert bob.get(f"/v1/uploads/{upload}").status_code == 404

        path = {"kind": "sample", "model": "vae-digits",
                "input": {"interpolate_between": [{"file": "a"}, {"file": "b"}], "steps": 3}}
        r = submit(ann, path, {"a": PNGS[1], "b": PNGS[2]}, wait=30)
        assert r.status_code == 200 and len(r.json()["output"]["images"]) == 3, r.text
        ends = [e["upload"] for e in r.json()["input"]["interpolate_between"]]

        # the files belong to their jobs: deleting a job deletes them, and gives bytes back
        for done, uploads in ((job["id"], [upload]), (r.json()["id"], ends)):
            assert ann.delete(f"/v1/jobs/{done}").status_code == 204
            for u in uploads:
                assert ann.get(f"/v1/uploads/{u}").status_code == 404
        assert stack.store.stored_bytes("ann") == before
        assert stack.uploads() == []


def test_a_refused_multipart_submission_leaves_nothing_behind(stack: Stack) -> None:
    with stack.svc.client("key-ann") as ann:
        before = stack.store.stored_bytes("ann"), stack.uploads()
        cases = [
            (classify(model="no-such-model"), {"digit": PNGS[0]}, 404, "no-such-model"),
            (classify(input={"image": {"file": "digit"}, "top_k": 0}), {"digit": PNGS[0]},
             422, "top_k"),
            (classify(), {}, 422, "not sent: ['digit']"),
            (classify(), {"digit": PNGS[0], "extra": PNGS[1]}, 422, "['extra']"),
            (classify(), {"digit": b"%PDF-1.4 not an image"}, 415, "not accepted"),
            ("{not json", {"digit": PNGS[0]}, 422, "JSON object"),
        ]
        for job, files, status, words in cases:
            r = submit(ann, job, files)
            assert r.status_code == status and words in r.json()["error"]["message"], r.text
        r = ann.post("/v1/jobs", files={"digit": ("d.png", PNGS[0], "image/png")})
        assert r.status_code == 422 and "'job'" in r.json()["error"]["message"]
        assert (stack.store.stored_bytes("ann"), stack.uploads()) == before


def test_a_resubmission_with_its_id_is_idempotent(stack: Stack) -> None:
    with stack.svc.client("key-ann") as ann:
        first = submit(ann, classify(id="mp-same"), {"digit": PNGS[0]})
        assert first.status_code == 202, first.text
        stored = stack.store.stored_bytes("ann")
        again = submit(ann, classify(id="mp-same"), {"digit": PNGS[0]})
        assert again.status_code == 200 and again.json()["id"] == "mp-same"
        assert again.json()["input"] == first.json()["input"]
        assert stack.store.stored_bytes("ann") == stored  # nothing stored twice
        other = submit(ann, classify(id="mp-same"), {"digit": PNGS[1]})
        assert other.status_code == 409
        assert stack.store.stored_bytes("ann") == stored


def test_the_sdk_sends_files_with_the_job(stack: Stack, tmp_path: Path) -> None:
    from service.client import AsyncClient, Client

    picture = tmp_path / "digit.png"
    picture.write_bytes(PNGS[1])
    with Client(stack.svc.url, "key-ann") as sdk:
        job = sdk.run("classify", "lenet5-digits", {"image": {"file": "d"}, "top_k": 1},
                      files={"d": picture}, timeout=60)
        assert job.status == "succeeded", job
        assert job.output.predictions[0].label == str(LABELS[1])  # type: ignore[union-attr]
        sdk.delete(job.id)

    async def from_bytes() -> Any:
        async with AsyncClient(stack.svc.url, "key-ann") as client:
            return await client.run("classify", "lenet5-digits",
                                    {"image": {"file": "d"}, "top_k": 1},
                                    files={"d": PNGS[2]}, timeout=60)

    job = asyncio.run(from_bytes())
    assert job.status == "succeeded" and job.output.predictions[0].label == str(LABELS[2])
