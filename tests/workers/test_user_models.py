"""The runtime catalog of fine-tuned models on both stores, its resolution rules, the local
copy a worker serves from, and what keeps fine-tuned weights alive."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from models.catalog import Catalog, ModelNotFound
from workers.blobs import FolderBlobs
from workers.errors import InvalidInput
from workers.settings import Settings
from workers.store import JobStore
from workers.store.sqlite import SQLiteStore
from workers.user_models import LocalWeights, check_name, open_user_models, resolve


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    if request.param == "sqlite":
        return SQLiteStore(tmp_path / "t.db")
    from workers.store.redis import RedisStore

    return RedisStore(request.getfixturevalue("redis_url"))


def _record(owner: str, name: str, sha: str = "ab" * 32) -> dict:
    return {"owner": owner, "name": name, "job_id": f"job-{owner}-{name}", "base_model": "b",
            "mode": "finetune", "labels": ["x", "y"], "created_at": "now",
            "weights_key": f"models/job-{owner}-{name}/model.safetensors",
            "sidecar_key": f"models/job-{owner}-{name}/model.json", "weights_sha256": sha,
            "entry": {"name": name, "family": "lenet5", "kinds": ["classify"],
                      "labels": ["x", "y"], "input": {"channels": 1, "height": 32, "width": 32}}}


def test_models_are_kept_per_owner(store: JobStore) -> None:
    models = open_user_models(store)
    models.put(_record("ann", "m"))
    models.put(_record("bob", "m"))
    models.put(_record("ann", "a"))
    assert [r["name"] for r in models.list("ann")] == ["a", "m"]
    assert models.get("bob", "m")["job_id"] == "job-bob-m"  # type: ignore[index]
    assert models.get("cy", "m") is None
    assert models.delete("ann", "m") and not models.delete("ann", "m")
    assert models.get("bob", "m") is not None and models.list("cy") == []


def test_catalog_names_win_and_others_models_are_not_found(tmp_path: Path) -> None:
    catalog = Catalog.load()
    models = open_user_models(SQLiteStore(tmp_path / "t.db"))
    models.put(_record("ann", "lenet5-digits"))  # cannot be submitted; never shadows anyway
    models.put(_record("ann", "mine"))
    assert resolve(catalog, models, "ann", "lenet5-digits").family == "lenet5"
    assert resolve(catalog, models, "ann", "lenet5-digits").weights is not None
    assert resolve(catalog, models, "ann", "mine").labels == ["x", "y"]
    with pytest.raises(ModelNotFound):
        resolve(catalog, models, "bob", "mine")
    with pytest.raises(InvalidInput, match="catalog model"):
        check_name("lenet5-digits", catalog)
    with pytest.raises(InvalidInput, match="must match"):
        check_name("Bad Name", catalog)


def test_a_worker_serves_a_local_copy_named_by_content(tmp_path: Path) -> None:
    blobs = FolderBlobs(tmp_path / "blobs")
    local = LocalWeights(tmp_path / "local", blobs)
    first, second = _record("ann", "m", "11" * 32), _record("bob", "m", "22" * 32)
    for record, data in ((first, b"one"), (second, b"two")):
        blobs.put(record["weights_key"], data, "application/octet-stream")
        blobs.put(record["sidecar_key"], b"{}", "application/json")
    a, b = local.entry(first), local.entry(second)
    assert a.name != b.name  # two owners' "m" never share a cache slot
    assert a.weights is not None and a.weights.read_bytes() == b"one"
    assert b.weights is not None and b.weights.read_bytes() == b"two"
    blobs.delete([second["weights_key"]])
    with pytest.raises(ModelNotFound):
        local.entry(_record("bob", "m", "33" * 32))


def test_retention_sweeps_job_blobs_but_keeps_model_weights(tmp_path: Path) -> None:
    blobs = FolderBlobs(tmp_path / "blobs")
    blobs.put("jobs/j/out.png", b"x", "image/png")
    blobs.put("models/j/model.safetensors", b"w", "application/octet-stream")
    old = time.time() - 10_000
    for path in (tmp_path / "blobs").rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))
    assert blobs.sweep(60) >= 1
    assert blobs.head("jobs/j/out.png") is None
    assert blobs.read("models/j/model.safetensors") == b"w"


def test_a_worker_of_the_train_queue_alone_takes_one_job_at_a_time() -> None:
    from workers.worker import job_threads

    catalog = Catalog.load()
    assert job_threads(Settings(), catalog, ["train"]) == 1
    assert job_threads(Settings(), catalog, ["convoy", "train"]) >= 8
