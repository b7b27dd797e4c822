"""``finetune`` jobs over HTTP, in both modes: a dataset archive uploaded, a model trained
on the ``train`` queue and served at once by an inference worker that was running before
it existed, cancel, a SIGKILLed training worker resumed from its last checkpoint, bad
archives refused, and another key's model out of sight and reach.

The base is ``lenet5-digits`` (built in, 61k parameters); the new task: digits 0 and 1
named ``zero`` and ``one``, a dozen images each, judged on the held-out digits 0 and 1."""

from __future__ import annotations

import io
import stat
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures import Service, wait_status
from tests.helpers import parse_sse

KEYS = "alice:key-alice,bob:key-bob"
PER_CLASS = 12


def _digit_pngs() -> tuple[dict[str, list[bytes]], list[tuple[bytes, str]]]:
    """({class: training PNGs}, [(held-out PNG, class)]) for the digits 0 and 1."""
    from models.data.digits import load_digits_split
    from models.images import png_bytes, to_pil

    x_train, y_train, x_test, y_test = load_digits_split(32)
    names = {0: "zero", 1: "one"}
    train = {n: [png_bytes(to_pil(x)) for x in x_train[y_train == d][:PER_CLASS]]
             for d, n in names.items()}
    held = [(png_bytes(to_pil(x)), names[int(y)]) for x, y in zip(x_test, y_test, strict=True)
            if int(y) in names]
    return train, held


DATA = _digit_pngs()


def _zip(members: dict[str, bytes], compress: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def good_archive() -> bytes:
    return _zip({f"digits/{label}/{i}.png": png for label, pngs in DATA[0].items()
                 for i, png in enumerate(pngs)})


def _upload(client: httpx.Client, data: bytes, name: str = "data.zip") -> str:
    r = client.post("/v1/uploads", files={"file": (name, data, "application/octet-stream")})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _finetune(client: httpx.Client, name: str, dataset: dict[str, Any], **extra: Any
              ) -> httpx.Response:
    return client.post("/v1/jobs", json={"kind": "finetune", "model": "lenet5-digits", "input": {
        "name": name, "dataset": dataset, "mode": "finetune", "epochs": 4, "batch_size": 8,
        "learning_rate": 0.003, "val_share": 0.25, "seed": 1, **extra}})


def _classify(client: httpx.Client, model: str, png: bytes) -> httpx.Response:
    import base64

    return client.post("/v1/jobs", headers={"Prefer": "wait=30"}, json={
        "kind": "classify", "model": model, "input": {"image": base64.b64encode(png).decode()}})


class KeyedService(Service):
    """A service with API keys (the worker listing needs one)."""

    def worker_ids(self) -> set[str]:
        try:
            r = self.client("key-alice").get("/v1/workers", timeout=2)
            return {w["id"] for w in r.json()["workers"]} if r.status_code == 200 else set()
        except httpx.HTTPError:
            return set()


@pytest.fixture(scope="module", params=["embedded", "redis"])
def svc(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Service]:
    """API, one inference worker and one training worker, with two keys."""
    from tests.conftest import redis_db_url

    redis_url = redis_db_url(14) if request.param == "redis" else None
    service = KeyedService(tmp_path_factory.mktemp(f"finetune-{request.param}"), redis_url,
                           CONVOY_API_KEYS=KEYS)
    try:
        service.start_api()
        service.start_worker()  # inference: queue convoy
        service.start_worker(True, "--queues", "train")
        yield service
    finally:
        service.stop()


def test_trained_model_is_served_at_once_to_its_owner_only(svc: Service) -> None:
    alice, bob = svc.client("key-alice"), svc.client("key-bob")
    upload = _upload(alice, good_archive())
    r = _finetune(alice, "zero-one", {"upload": upload})
    assert r.status_code == 202, r.text
    job = wait_status(alice, r.json()["id"], ("succeeded", "failed"), timeout=120)
    assert job["status"] == "succeeded", job
    out = job["output"]
    assert out["model"]["labels"] == ["one", "zero"] and out["model"]["base_model"] == "lenet5-digits"
    assert out["dataset"]["images"] == {"one": PER_CLASS, "zero": PER_CLASS}
    assert out["weights"]["name"] == "model.safetensors" and out["metrics"]["val_accuracy"] is not None
    events = parse_sse(alice.get(f"/v1/jobs/{job['id']}/events").text)
    train = [e["data"] for e in events if e["event"] == "train"]
    epochs = [e["data"] for e in events if e["event"] == "epoch"]
    assert train and {"loss", "train_accuracy", "eta_s", "step", "steps"} <= set(train[-1])
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4] and "val_accuracy" in epochs[-1]
    sidecar = alice.get(out["sidecar"]["url"]).json()
    assert sidecar["finetune"]["mode"] == "finetune"
    assert sidecar["finetune"]["dataset"]["sha256"] and sidecar["finetune"]["hyperparameters"]

    # listed for its owner, classifying held-out digits well above chance, on the
    # inference worker that started before the model existed
    mine = {m["name"]: m for m in alice.get("/v1/models").json()["models"]}
    assert mine["zero-one"]["labels"] == ["one", "zero"] and mine["zero-one"]["owned"]
    held = DATA[1][:40]
    right = 0
    for png, label in held:
        res = _classify(alice, "zero-one", png)
        assert res.status_code == 200, res.text
        right += res.json()["output"]["predictions"][0]["label"] == label
    assert right / len(held) >= 0.8, right

    # another key: neither sees, nor uses, nor deletes it
    assert "zero-one" not in {m["name"] for m in bob.get("/v1/models").json()["models"]}
    assert bob.get("/v1/models/zero-one").status_code == 404
    assert _classify(bob, "zero-one", held[0][0]).status_code == 404
    assert bob.delete("/v1/models/zero-one").status_code == 404
    # bob may have a model of the same name; the names of the catalog are nobody's
    assert _finetune(bob, "lenet5-digits", {"upload": _upload(bob, good_archive())}
                     ).status_code == 422
    assert _finetune(alice, "zero-one", {"upload": upload}).status_code == 409
    assert alice.delete("/v1/models/lenet5-digits").status_code == 409

    assert alice.delete("/v1/models/zero-one").status_code == 204
    assert alice.get("/v1/models/zero-one").status_code == 404
    assert _classify(alice, "zero-one", held[0][0]).status_code == 404


def test_cancel_stops_training_at_the_next_step(svc: Service) -> None:
    alice = svc.client("key-alice")
    r = _finetune(alice, "canceled", {"builtin": "digits-5-9", "per_class": 100},
                  epochs=200, batch_size=4)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + 60
    while alice.get(f"/v1/jobs/{job_id}").json().get("progress") is None:
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.1)
    t0 = time.monotonic()
    alice.post(f"/v1/jobs/{job_id}/cancel")
    job = wait_status(alice, job_id, ("canceled", "failed", "succeeded"), timeout=30)
    assert job["status"] == "canceled" and time.monotonic() - t0 < 10
    assert "canceled" not in {m["name"] for m in alice.get("/v1/models").json()["models"]}


def _symlink_zip() -> bytes:
    buf = io.BytesIO()
    png = DATA[0]["zero"][0]
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a/1.png", png)
        link = zipfile.ZipInfo("b/passwd.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    return buf.getvalue()


def _traversal_tar() -> bytes:
    buf = io.BytesIO()
    png = DATA[0]["zero"][0]
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name in ("a/1.png", "../../b/1.png"):
            info = tarfile.TarInfo(name)
            info.size = len(png)
            tf.addfile(info, io.BytesIO(png))
    return buf.getvalue()


@pytest.mark.parametrize("archive,named", [
    (lambda: _zip({"a/1.png": DATA[0]["zero"][0], "b/bomb.png": bytes(8 << 20)},
                  zipfile.ZIP_DEFLATED), "b/bomb.png"),
    (_traversal_tar, "../../b/1.png"),
    (lambda: _zip({"a/1.png": DATA[0]["zero"][0], "a/../../etc/x.png": DATA[0]["one"][0]}),
     "a/../../etc/x.png"),
    (_symlink_zip, "b/passwd.png"),
    (lambda: _zip({"only/1.png": DATA[0]["zero"][0], "only/2.png": DATA[0]["one"][0]}),
     "only"),
])
def test_bad_archives_are_refused_naming_the_member(svc: Service, archive: Any,
                                                    named: str) -> None:
    alice = svc.client("key-alice")
    r = _finetune(alice, "bad", {"upload": _upload(alice, archive())})
    assert r.status_code == 422, r.text
    assert named in r.json()["error"]["message"]


def test_a_member_that_is_not_an_image_fails_the_job_naming_it(svc: Service) -> None:
    alice = svc.client("key-alice")
    archive = _zip({"a/1.png": DATA[0]["zero"][0], "b/notes.png": b"not an image at all"})
    r = _finetune(alice, "not-image", {"upload": _upload(alice, archive)})
    assert r.status_code == 202, r.text
    job = wait_status(alice, r.json()["id"], ("failed", "succeeded"), timeout=60)
    assert job["error"]["code"] == "invalid_input" and "b/notes.png" in job["error"]["message"]


@pytest.mark.parametrize("fresh", ["embedded", "redis"])
def test_killed_training_worker_resumes_from_its_last_checkpoint(
        fresh: str, tmp_path: Path) -> None:
    import signal

    from tests.conftest import redis_db_url

    service = Service(tmp_path, redis_db_url(15) if fresh == "redis" else None)
    try:
        service.start_api()
        first = service.start_worker(True, "--queues", "train")
        client = service.client()
        r = _finetune(client, "resumed", {"builtin": "digits-5-9", "per_class": 60},
                      epochs=6, batch_size=4, augment=False)
        job_id = r.json()["id"]
        deadline = time.monotonic() + 90
        while "event: epoch" not in _events_so_far(service, job_id):
            assert time.monotonic() < deadline, service.tail()
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        service.start_worker(True, "--queues", "train")
        job = wait_status(client, job_id, ("succeeded", "failed"), timeout=120)
        assert job["status"] == "succeeded", (job, service.tail())
        assert job["attempts"] == 2
        out = job["output"]
        full = 6 * ((out["metrics"]["images"]["train"] + 3) // 4)
        assert out["resumed_from_epoch"] >= 1 and 0 < out["steps"] < full, out
    finally:
        service.stop()


def _events_so_far(service: Service, job_id: str) -> str:
    """The events of a running job up to now (the stream is cut after a moment)."""
    text = ""
    try:
        with httpx.stream("GET", f"{service.url}/v1/jobs/{job_id}/events",
                          timeout=httpx.Timeout(1.0)) as r:
            for chunk in r.iter_text():
                text += chunk
                if "event: epoch" in text:
                    break
    except httpx.ReadTimeout:
        pass
    return text


def test_cli_packs_a_folder_uploads_trains_and_tries_the_model(svc: Service,
                                                               tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from tests.fixtures import ROOT

    for label, pngs in DATA[0].items():
        (tmp_path / "data" / label).mkdir(parents=True)
        for i, png in enumerate(pngs):
            (tmp_path / "data" / label / f"{i}.png").write_bytes(png)
    (tmp_path / "data" / "notes.txt").write_text("left out: not in a class folder")
    (tmp_path / "try.png").write_bytes(DATA[1][0][0])
    cli = [sys.executable, "-m", "service.cli"]
    env = {**svc.env, "CONVOY_URL": svc.url, "CONVOY_API_KEY": "key-alice"}
    done = subprocess.run([*cli, "finetune", "lenet5-digits", "cli-made", "--data",
                           str(tmp_path / "data"), "--epochs", "3", "--batch-size", "8",
                           "--try", str(tmp_path / "try.png")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"packed {2 * PER_CLASS} images" in done.stdout and "succeeded" in done.stdout
    tried = json.loads(done.stdout[done.stdout.rindex('{\n  "predictions"'):])
    assert {p["label"] for p in tried["predictions"]} == {"zero", "one"}
    gone = subprocess.run([*cli, "delete-model", "cli-made"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert gone.returncode == 0 and "deleted" in gone.stdout, gone.stderr


def test_a_training_job_past_its_deadline_fails_with_timeout(svc: Service) -> None:
    alice = svc.client("key-alice")
    r = alice.post("/v1/jobs", json={
        "kind": "finetune", "model": "lenet5-digits", "timeout_s": 2, "input": {
            "name": "late", "dataset": {"builtin": "digits-5-9", "per_class": 100},
            "epochs": 200, "batch_size": 4}})
    assert r.status_code == 202, r.text
    job = wait_status(alice, r.json()["id"], ("failed", "succeeded", "canceled"), timeout=60)
    assert job["error"]["code"] == "timeout", job
    assert "late" not in {m["name"] for m in alice.get("/v1/models").json()["models"]}
