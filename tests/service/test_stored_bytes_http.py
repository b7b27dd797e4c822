"""Deleting gives stored bytes back: a key at its bound on stored bytes deletes a finished
job (input, previews, outputs) or an upload and can store that much again at once, in
embedded mode (folder blobs, SQLite) and with Redis (S3 blobs)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from core.store import JobStore
from tests.fixtures import Service, wait_status
from tests.service.test_faults import store_of
from tests.support.s3 import S3Server, start_s3

pytestmark = pytest.mark.slow
BOUND = 400_000
PREFIX = "stored-bytes-http"


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    yield from start_s3()


@pytest.fixture(scope="module", params=["embedded", "redis"])
def bounded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Service, JobStore]]:
    """A service whose keys may store ``BOUND`` bytes, with a worker; and its store."""
    from tests.conftest import redis_db_url

    env = {"CONVOY_API_KEYS": "ann:key-ann", "CONVOY_MAX_STORED_BYTES_PER_OWNER": str(BOUND)}
    redis_url = None
    if request.param == "redis":
        redis_url = redis_db_url(8)
        env.update(request.getfixturevalue("s3_server").env(PREFIX))
    svc = Service(tmp_path_factory.mktemp(f"bytes-{request.param}"), redis_url, **env)
    try:
        svc.start_api()
        svc.start_worker(False)
        with svc.client("key-ann") as c:  # /v1/workers needs a key here
            svc._wait(lambda: c.get("/v1/workers").json()["workers"], "worker")
        store = store_of(svc)
        yield svc, store
    finally:
        svc.stop()


def generate() -> dict[str, Any]:
    return {"kind": "generate", "model": "sleepy",
            "input": {"n": 2, "steps": 3, "seed": 5, "preview_every": 1, "prompt": "a square"}}


def png_of(size: int) -> bytes:
    """A PNG of exactly ``size`` bytes (a small image, padded after its end)."""
    buf = io.BytesIO()
    Image.frombytes("RGB", (8, 8), os.urandom(192)).save(buf, format="PNG")
    assert buf.tell() <= size
    return buf.getvalue() + bytes(size - buf.tell())


def test_deleting_at_the_bound_makes_room_at_once(bounded: tuple[Service, JobStore]) -> None:
    svc, store = bounded
    with svc.client("key-ann") as c:
        first = c.post("/v1/jobs", json=generate()).json()
        assert wait_status(c, first["id"], ("succeeded",))["status"] == "succeeded"
        job_bytes = store.stored_bytes("ann")
        assert job_bytes > 1000  # its input, previews and outputs
        # an upload fills the bound up to less than another job's input
        r = c.post("/v1/uploads", files={"file": ("f.png", png_of(BOUND - job_bytes - 20))})
        assert r.status_code == 201, r.text
        upload = r.json()["id"]
        refused = c.post("/v1/jobs", json=generate())
        assert refused.status_code == 429 and "bytes" in refused.json()["error"]["message"]

        assert c.delete(f"/v1/jobs/{first['id']}").status_code == 204
        assert store.stored_bytes("ann") == BOUND - job_bytes - 20  # the upload alone
        again = c.post("/v1/jobs", json=generate())
        assert again.status_code in (201, 202), again.text
        assert wait_status(c, again.json()["id"], ("succeeded",))["status"] == "succeeded"

        # a new upload of the first one's size is refused until the first is deleted
        assert c.post("/v1/uploads", files={"file": ("g.png", png_of(BOUND // 2))}
                      ).status_code == 429
        assert c.delete(f"/v1/uploads/{upload}").status_code == 204
        assert c.post("/v1/uploads", files={"file": ("g.png", png_of(BOUND // 2))}
                      ).status_code == 201
        assert c.delete(f"/v1/jobs/{again.json()['id']}").status_code == 204
        assert store.stored_bytes("ann") == BOUND // 2
