"""The job API end to end, in both modes, against real processes (API + worker)."""

from __future__ import annotations

import concurrent.futures as cf
import time

import pytest

from tests.fixtures import Service, wait_status
from tests.helpers import b64_png, digit_images, parse_sse

pytestmark = pytest.mark.slow


def classify(image: str, **extra: object) -> dict:
    return {"kind": "classify", "model": "lenet5-digits", "input": {"image": image, **extra}}


def test_submit_poll_result(service: Service) -> None:
    images, labels = digit_images(3)
    with service.client() as c:
        r = c.post("/v1/jobs", json=classify(images[0], top_k=3))
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["status"] in ("queued", "running", "succeeded") and len(job["id"]) >= 22
        done = wait_status(c, job["id"], ("succeeded", "failed"))
        assert done["status"] == "succeeded", done
        preds = done["output"]["predictions"]
        assert len(preds) == 3 and preds[0]["label"] == str(labels[0])
        assert preds[0]["score"] >= preds[1]["score"] >= preds[2]["score"]
        listed = c.get("/v1/jobs", params={"limit": 100}).json()
        assert job["id"] in [j["id"] for j in listed["jobs"]]


def test_prefer_wait_returns_the_finished_job(service: Service) -> None:
    images, labels = digit_images(1)
    with service.client() as c:
        r = c.post("/v1/jobs", json=classify(images[0]), headers={"Prefer": "wait=20"})
        assert r.status_code == 200 and r.json()["status"] == "succeeded"
        assert r.json()["output"]["predictions"][0]["label"] == str(labels[0])


def test_event_stream_and_resume(service: Service) -> None:
    body = {"kind": "generate", "model": "sleepy",
            "input": {"steps": 6, "seed": 3, "n": 2, "preview_every": 2}}
    with service.client() as c:
        job = c.post("/v1/jobs", json=body).json()
        full = parse_sse(c.get(f"/v1/jobs/{job['id']}/events").text)
        ids = [e["id"] for e in full]
        assert ids == list(range(1, len(ids) + 1))  # ordered, nothing missing
        kinds = [e["event"] for e in full]
        assert kinds[0] == "status" and full[0]["data"]["status"] == "queued"
        assert full[-1] == {**full[-1], "event": "status", "data": {"status": "succeeded"}}
        assert [e["data"]["step"] for e in full if e["event"] == "progress"] == [1, 2, 3, 4, 5, 6]
        previews = [e for e in full if e["event"] == "preview"]
        assert len(previews) == 3 and kinds.index("preview") < kinds.index("output")
        assert c.get(previews[0]["data"]["url"]).content.startswith(b"\x89PNG")
        # resume after the 4th event: exactly the rest, no repeats
        resumed = parse_sse(c.get(f"/v1/jobs/{job['id']}/events",
                                  headers={"Last-Event-ID": "4"}).text)
        assert [e["id"] for e in resumed] == ids[4:]
        output = next(e for e in full if e["event"] == "output")["data"]
        assert [im["seed"] for im in output["images"]] == [3, 4]


def test_idempotent_and_conflicting_resubmission(service: Service) -> None:
    images, _ = digit_images(2)
    client_id = f"client-{time.time_ns()}"
    with service.client() as c:
        first = c.post("/v1/jobs", json={**classify(images[0]), "id": client_id})
        assert first.status_code == 202 and first.json()["id"] == client_id
        again = c.post("/v1/jobs", json={**classify(images[0]), "id": client_id})
        assert again.status_code == 200 and again.json()["id"] == client_id
        other = c.post("/v1/jobs", json={**classify(images[1]), "id": client_id})
        assert other.status_code == 409 and other.json()["error"]["code"] == "conflict"


def test_cancel_queued_and_running(service: Service) -> None:
    with service.client() as c:
        queued = c.post("/v1/jobs", json={"kind": "generate", "model": "parked",
                                          "input": {"steps": 5}}).json()
        r = c.post(f"/v1/jobs/{queued['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "canceled"
        running = c.post("/v1/jobs", json={"kind": "generate", "model": "sleepy",
                                           "input": {"steps": 400}}).json()
        job = wait_status(c, running["id"], ("running",))
        while not (job.get("progress") or {}).get("step"):
            job = c.get(f"/v1/jobs/{running['id']}").json()
        assert c.post(f"/v1/jobs/{running['id']}/cancel").status_code == 200
        done = wait_status(c, running["id"], ("canceled", "succeeded", "failed"), timeout=10)
        assert done["status"] == "canceled"
        assert done["progress"]["step"] < 400
        # a finished job is returned unchanged
        assert c.post(f"/v1/jobs/{running['id']}/cancel").json()["status"] == "canceled"


def test_not_found_and_invalid_input(service: Service) -> None:
    images, _ = digit_images(1)
    with service.client() as c:
        r = c.get("/v1/jobs/no-such-job")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = c.post("/v1/jobs", json={**classify(images[0]), "model": "no-such-model"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        for bad in (
            classify("not base64 at all!"),
            classify(b64_png(__import__("numpy").zeros((4, 4), "uint8"))[:40]),  # truncated
            {"kind": "classify", "model": "lenet5-digits", "input": {}},  # missing image
            classify(images[0], top_k=0),
            classify(images[0], top_k=10**6),
            {"kind": "classify", "model": "lenet5-digits", "input": {"image": images[0]},
             "unknown": 1},
        ):
            r = c.post("/v1/jobs", json=bad)
            assert r.status_code == 422, (bad, r.text)
            assert r.json()["error"]["code"] == "invalid_input"


def test_heldout_accuracy_through_http(service: Service) -> None:
    """The sidecar's held-out top-1, reproduced by submitting the held-out quarter."""
    images, labels = digit_images()
    with service.client() as c:
        sidecar = c.get("/v1/models/lenet5-digits").json()["metrics"]["top1"]

        def one(image: str) -> str:
            r = c.post("/v1/jobs", json=classify(image, top_k=1), headers={"Prefer": "wait=60"})
            assert r.status_code == 200, r.text
            return str(r.json()["output"]["predictions"][0]["label"])

        with cf.ThreadPoolExecutor(16) as pool:
            predicted = list(pool.map(one, images))
    accuracy = sum(p == str(y) for p, y in zip(predicted, labels, strict=True)) / len(labels)
    assert len(labels) == 450
    assert accuracy >= 0.985
    assert abs(accuracy - sidecar) < 1e-9  # same images, same model: the same figure
