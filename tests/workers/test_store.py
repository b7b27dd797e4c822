from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from workers.store import TERMINAL, JobStore
from workers.store.base import now_iso
from workers.store.sqlite import SQLiteStore


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    if request.param == "sqlite":
        return SQLiteStore(tmp_path / "t.db")
    from workers.store.redis import RedisStore

    return RedisStore(request.getfixturevalue("redis_url"))


def job(jid: str, owner: str = "alice", kind: str = "classify") -> dict:
    return {"id": jid, "owner": owner, "kind": kind, "model": "m", "queue": "convoy",
            "input": {"top_k": 3}, "request_hash": "h", "created_at": now_iso(),
            "status": "queued", "attempts": 0}


def test_create_is_idempotent_and_get_roundtrips(store: JobStore) -> None:
    rec, created = store.create(job("a"))
    assert created and rec["status"] == "queued"
    again, created2 = store.create(job("a"))
    assert not created2 and again["id"] == "a"
    got = store.get("a")
    assert got is not None and got["input"] == {"top_k": 3} and got["attempts"] == 0
    assert store.get("missing") is None


def test_claim_finish_requeue_transitions(store: JobStore) -> None:
    store.create(job("a"))
    assert store.count_queued() == 1
    claimed = store.claim("a", "w1")
    assert claimed is not None and claimed["status"] == "running" and claimed["attempts"] == 1
    assert store.claim("a", "w2") is None  # already held
    assert store.count_queued() == 0
    assert store.running_jobs() == [("a", "w1")]
    assert store.requeue("a", "w2") is False  # not the holder
    assert store.mark_on_device({"a": claimed["token"]}) == set()  # it ran on the device
    assert store.requeue("a", "w1") is True
    again = store.claim("a", "w2")
    assert again is not None and again["attempts"] == 2
    assert store.finish("a", "w1", "succeeded") is None  # w1 no longer holds it
    done = store.finish("a", "w2", "succeeded", output={"x": 1})
    assert done is not None and done["status"] in TERMINAL and done["output"] == {"x": 1}
    assert store.finish("a", None, "canceled") is None  # terminal stays terminal
    assert store.running_jobs() == []


def test_events_are_ordered_and_resumable(store: JobStore) -> None:
    store.create(job("a"))
    seqs = [store.append_event("a", "progress", {"step": i}) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert [e.data["step"] for e in store.events("a", after=2)] == [2, 3, 4]
    assert store.events("a", after=5) == []


def test_events_block_until_one_arrives(store: JobStore) -> None:
    store.create(job("a"))
    threading.Timer(0.2, lambda: store.append_event("a", "log", {"m": "hi"})).start()
    t0 = time.monotonic()
    got = store.events("a", after=0, block_s=3.0)
    assert [e.type for e in got] == ["log"] and time.monotonic() - t0 < 2.5


def test_events_of_many_jobs_in_one_read(store: JobStore) -> None:
    for jid in ("a", "b", "c"):
        store.create(job(jid))
    for i in range(3):
        store.append_event("a", "progress", {"step": i})
    store.append_event("b", "log", {"m": "b"})
    found = store.events_many({"a": 1, "b": 0, "c": 0, "gone": 0})
    assert {j: [e.seq for e in evs] for j, evs in found.items()} == {"a": [2, 3], "b": [1]}
    assert store.events_many({"a": 3, "c": 0}) == {}
    threading.Timer(0.2, lambda: store.append_event("c", "log", {"m": "c"})).start()
    t0 = time.monotonic()
    found = store.events_many({"a": 3, "c": 0}, block_s=3.0)
    assert [e.data for e in found["c"]] == [{"m": "c"}] and list(found) == ["c"]
    assert time.monotonic() - t0 < 2.5


def test_list_is_owner_scoped_newest_first_with_cursor(store: JobStore) -> None:
    for i in range(5):
        store.create(job(f"j{i}"))
    store.create(job("other", owner="bob"))
    page, cursor = store.list("alice", None, None, 2, None)
    assert [j["id"] for j in page] == ["j4", "j3"] and cursor
    page2, cursor2 = store.list("alice", None, None, 10, cursor)
    assert [j["id"] for j in page2] == ["j2", "j1", "j0"] and cursor2 is None
    assert [j["id"] for j in store.list("bob", None, None, 10, None)[0]] == ["other"]


def test_artifacts_cancel_and_workers(store: JobStore) -> None:
    store.create(job("a"))
    store.put_artifact("a", "image-0.png", b"\x89PNG...", "image/png")
    assert store.get_artifact("a", "image-0.png") == (b"\x89PNG...", "image/png")
    assert store.get_artifact("a", "nope.png") is None
    assert store.artifact_names("a") == ["image-0.png"]
    assert not store.cancel_requested("a")
    store.request_cancel("a")
    assert store.cancel_requested("a")
    store.heartbeat("w1", {"device": "cpu"}, ttl_s=5)
    store.heartbeat("w2", {"device": "cpu"}, ttl_s=0.2)
    time.sleep(0.3)
    assert [w["id"] for w in store.workers()] == ["w1"]


def test_sqlite_retention_purges_jobs_events_and_artifacts(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db", retention_s=0)
    store.create(job("old"))
    store.append_event("old", "log", {})
    store.put_artifact("old", "a.png", b"x", "image/png")
    assert store.purge_expired() == 1
    assert store.get("old") is None and store.get_artifact("old", "a.png") is None
    assert store.events("old") == []


def test_redis_records_expire_after_retention(redis_url: str) -> None:
    from workers.store.redis import RedisStore

    store = RedisStore(redis_url, retention_s=1)
    store.create(job("old"))
    store.append_event("old", "log", {})
    store.put_artifact("old", "a.png", b"x", "image/png")
    time.sleep(1.3)
    assert store.get("old") is None and store.get_artifact("old", "a.png") is None
    assert store.events("old") == []


def test_a_requeued_run_is_charged_only_if_it_reached_the_device(store: JobStore) -> None:
    store.create(job("held"))
    first = store.claim("held", "w1")
    assert first is not None and first["attempts"] == 1
    assert store.requeue("held", "w1") is True  # its worker died while it waited
    back = store.get("held")
    assert back is not None and back["status"] == "queued" and back["attempts"] == 0
    second = store.claim("held", "w2")
    assert second is not None and second["attempts"] == 1
    assert second["token"] > first["token"]  # a new claim, whatever was charged
    assert store.mark_on_device({"held": second["token"]}) == set()
    assert store.requeue("held", "w2") is True  # died on the device: charged
    charged = store.get("held")
    assert charged is not None and charged["attempts"] == 1
    assert charged["device"] == second["token"]


def test_writes_of_a_run_whose_claim_is_over_are_refused(store: JobStore) -> None:
    from workers.store.base import StaleClaim

    store.create(job("a"))
    stale = store.claim("a", "w1")
    assert stale is not None
    assert store.requeue("a", "w1") is True  # w1 was taken for dead
    fresh = store.claim("a", "w1")  # the same worker name, a new claim
    assert fresh is not None and fresh["token"] != stale["token"]
    old, new = stale["token"], fresh["token"]
    assert store.stopped_among({"a": old}) == {"a": "lost"}
    assert store.stopped_among({"a": new}) == {}
    assert store.mark_on_device({"a": old}) == {"a"}
    with pytest.raises(StaleClaim):
        store.append_event("a", "preview", {"name": "p.png"}, token=old)
    with pytest.raises(StaleClaim):
        store.put_artifact("a", "image-0.png", b"stale", "image/png", token=old)
    store.progress_many(["a"], 5, 10, tokens=[old])  # skipped, not raised
    assert store.finish_many([("a", "w1", "succeeded", {"x": "stale"}, None)],
                             tokens=[old]) == [False]
    assert store.events("a") == []  # nothing of the stale run's got through
    store.put_artifact("a", "image-0.png", b"fresh", "image/png", token=new)
    store.progress_many(["a"], 1, 10, tokens=[new])
    assert store.finish_many([("a", "w1", "succeeded", {"x": "fresh"}, None)],
                             tokens=[new]) == [True]
    done = store.get("a")
    assert done is not None and done["output"] == {"x": "fresh"}
    assert done["progress"] == {"step": 1, "total": 10}
    assert store.get_artifact("a", "image-0.png") == (b"fresh", "image/png")
    # the run is over: its own token is stale now too
    with pytest.raises(StaleClaim):
        store.append_event("a", "progress", {"step": 2}, token=new)
    assert store.stopped_among({"a": new}) == {"a": "lost"}
    assert [e.type for e in store.events("a")] == ["progress", "output", "status"]


def test_an_owners_stored_bytes_are_bounded(store: JobStore) -> None:
    from workers.store.base import QueueFull

    store.max_owner_bytes = 5000
    big = {**job("a"), "input": {"image": "x" * 3000}}
    store.accept(big, 100, 100)
    used = store.stored_bytes("alice")
    assert 3000 < used < 3100
    store.put_artifact("a", "image-0.png", b"\x89PNG" + b"\x00" * 1500, "image/png")
    assert store.stored_bytes("alice") == used + 1504
    with pytest.raises(QueueFull) as over:  # 3000 more would pass the bound
        store.accept({**big, "id": "b"}, 100, 100)
    assert over.value.whose == "bytes"
    with pytest.raises(QueueFull) as alone:
        store.accept({**job("c"), "input": {"image": "x" * 6000}}, 100, 100)
    assert alone.value.whose == "size"
    assert store.get("b") is None and store.get("c") is None
    store.accept({**big, "id": "d", "owner": "bob"}, 100, 100)  # another owner's bound
    assert store.stored_bytes("bob") == used
