from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from core.store import TERMINAL, Job, JobStore, Outcome, StoreUnavailable
from core.store.base import QueueFull, StaleClaim
from core.store.sqlite import SQLiteStore
from tests.support.jobs import NO_LIMIT, job, put


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    if request.param == "sqlite":
        return SQLiteStore(tmp_path / "t.db")
    from core.store.redis import RedisStore

    return RedisStore(request.getfixturevalue("redis_url"))


def claim(store: JobStore, job_id: str, worker: str) -> Job:
    (claimed,) = store.claim([job_id], worker)
    assert isinstance(claimed, Job), claimed
    return claimed


def test_accept_is_idempotent_and_get_roundtrips(store: JobStore) -> None:
    ((rec, created),) = store.accept([job("a")], NO_LIMIT, NO_LIMIT)
    assert created and rec.status == "queued"
    ((again, created2),) = store.accept([job("a", input={"top_k": 5})], NO_LIMIT, NO_LIMIT)
    assert not created2 and again.id == "a" and again.input == {"top_k": 3}
    got = store.get("a")
    assert got is not None and got.input == {"top_k": 3} and got.attempts == 0
    assert got == rec
    assert store.get("missing") is None
    assert [(e.type, e.data) for e in store.events("a")] == [("status", {"status": "queued"})]


def test_every_field_of_the_record_roundtrips(store: JobStore) -> None:
    sent = job("a", queue="gpu", timeout_s=30.0, priority=3, webhook="http://127.0.0.1:9/h",
               webhook_events=["completed", "start"])
    put(store, sent)
    assert store.get("a") == sent
    running = claim(store, "a", "w1")
    store.progress({"a": running.token}, 1, 4)
    store.finish([Outcome("a", "failed", error={"code": "internal", "message": "x"},
                          worker="w1", token=running.token)])
    done = store.get("a")
    assert done is not None and done.fixed() == sent.fixed()
    assert (done.status, done.worker, done.attempts, done.progress, done.error) == (
        "failed", "w1", 1, {"step": 1, "total": 4}, {"code": "internal", "message": "x"})


def test_claim_finish_requeue_transitions(store: JobStore) -> None:
    put(store, job("a"))
    assert store.count_queued() == 1
    assert store.claim(["a", "gone"], "w1")[1] == "missing"
    claimed = store.get("a")
    assert claimed is not None and claimed.status == "running" and claimed.attempts == 1
    assert store.claim(["a"], "w2") == ["running"]  # already held
    assert store.count_queued() == 0
    assert store.running_jobs() == [("a", "w1")]
    assert store.requeue({"a": "w2"}) == set()  # not the holder
    assert store.mark_on_device({"a": claimed.token}) == set()  # it ran on the device
    assert store.requeue({"a": "w1"}) == {"a"}
    again = claim(store, "a", "w2")
    assert again.attempts == 2
    assert store.finish([Outcome("a", "succeeded", worker="w1")]) == [False]  # not w1's
    assert store.finish([Outcome("a", "succeeded", output={"x": 1}, worker="w2")]) == [True]
    done = store.get("a")
    assert done is not None and done.status in TERMINAL and done.output == {"x": 1}
    assert store.finish([Outcome("a", "canceled")]) == [False]  # terminal stays terminal
    assert store.running_jobs() == []
    assert [(e.type, e.data.get("status")) for e in store.events("a")] == [
        ("status", "queued"), ("status", "running"), ("status", "queued"),
        ("status", "running"), ("output", None), ("status", "succeeded")]


def test_cancel_ends_a_queued_job_and_flags_a_running_one(store: JobStore) -> None:
    put(store, job("q"), job("r"))
    running = claim(store, "r", "w1")
    queued = store.cancel("q")
    assert queued is not None and queued.status == "canceled" and queued.cancel_requested
    assert [e.data for e in store.events("q")][-1] == {"status": "canceled"}
    flagged = store.cancel("r")
    assert flagged is not None and flagged.status == "running" and flagged.cancel_requested
    assert store.stopped_among({"r": running.token}) == {"r": "canceled"}
    assert store.cancel("gone") is None
    assert store.finish([Outcome("r", "canceled", worker="w1", token=running.token)]) == [True]
    assert store.cancel("r") is not None and store.get("r").status == "canceled"  # type: ignore[union-attr]


def test_queue_limits_of_accept(store: JobStore) -> None:
    out = store.accept([job("a"), job("b"), job("c", owner="bob"), job("d", owner="carol")],
                       max_mine=1, max_all=2)
    assert [o if isinstance(o, tuple) else o.whose for o in out][1:] == ["owner", out[2], "all"]
    assert isinstance(out[0], tuple) and out[0][1]
    assert store.get("b") is None and store.get("d") is None
    assert store.count_queued("alice") == 1 and store.count_queued() == 2


def test_events_are_ordered_and_resumable(store: JobStore) -> None:
    put(store, job("a"))
    seqs = [store.append_event("a", "progress", {"step": i}) for i in range(5)]
    assert seqs == [2, 3, 4, 5, 6]  # 1 is the queued event
    assert [e.data["step"] for e in store.events("a", after=3)] == [2, 3, 4]
    assert store.events("a", after=6) == []
    with pytest.raises(KeyError):
        store.append_event("gone", "log", {})


def test_events_block_until_one_arrives(store: JobStore) -> None:
    put(store, job("a"))
    threading.Timer(0.2, lambda: store.append_event("a", "log", {"m": "hi"})).start()
    t0 = time.monotonic()
    got = store.events("a", after=1, block_s=3.0)
    assert [e.type for e in got] == ["log"] and time.monotonic() - t0 < 2.5


def test_events_of_many_jobs_in_one_read(store: JobStore) -> None:
    put(store, job("a"), job("b"), job("c"))
    for i in range(3):
        store.append_event("a", "progress", {"step": i})
    store.append_event("b", "log", {"m": "b"})
    found = store.events_many({"a": 2, "b": 1, "c": 1, "gone": 0})
    assert {j: [e.seq for e in evs] for j, evs in found.items()} == {"a": [3, 4], "b": [2]}
    assert store.events_many({"a": 4, "c": 1}) == {}
    threading.Timer(0.2, lambda: store.append_event("c", "log", {"m": "c"})).start()
    t0 = time.monotonic()
    found = store.events_many({"a": 4, "c": 1}, block_s=3.0)
    assert [e.data for e in found["c"]] == [{"m": "c"}] and list(found) == ["c"]
    assert time.monotonic() - t0 < 2.5


def test_list_is_owner_scoped_newest_first_with_cursor(store: JobStore) -> None:
    put(store, *[job(f"j{i}") for i in range(5)], job("other", owner="bob"))
    page, cursor = store.list("alice", None, None, 2, None)
    assert [j.id for j in page] == ["j4", "j3"] and cursor
    page2, cursor2 = store.list("alice", None, None, 10, cursor)
    assert [j.id for j in page2] == ["j2", "j1", "j0"] and cursor2 is None
    assert [j.id for j in store.list("bob", None, None, 10, None)[0]] == ["other"]
    assert [j.id for j in store.list("alice", "running", None, 10, None)[0]] == []


def test_artifacts_and_workers(store: JobStore) -> None:
    put(store, job("a"))
    store.put_artifact("a", "image-0.png", b"\x89PNG...", "image/png")
    assert store.get_artifact("a", "image-0.png") == (b"\x89PNG...", "image/png")
    assert store.get_artifact("a", "nope.png") is None
    assert store.artifact_names("a") == ["image-0.png"]
    store.heartbeat("w1", {"device": "cpu"}, ttl_s=5)
    store.heartbeat("w2", {"device": "cpu"}, ttl_s=0.2)
    time.sleep(0.3)
    assert [w["id"] for w in store.workers()] == ["w1"]


def test_sqlite_retention_purges_jobs_events_and_artifacts(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db", retention_s=0)
    put(store, job("old"))
    store.append_event("old", "log", {})
    store.put_artifact("old", "a.png", b"x", "image/png")
    assert store.purge_expired() == 1
    assert store.get("old") is None and store.get_artifact("old", "a.png") is None
    assert store.events("old") == []


def test_redis_records_expire_after_retention(redis_url: str) -> None:
    from core.store.redis import RedisStore

    store = RedisStore(redis_url, retention_s=1)
    put(store, job("old"))
    store.append_event("old", "log", {})
    store.put_artifact("old", "a.png", b"x", "image/png")
    time.sleep(1.3)
    assert store.get("old") is None and store.get_artifact("old", "a.png") is None
    assert store.events("old") == []


def test_a_requeued_run_is_charged_only_if_it_reached_the_device(store: JobStore) -> None:
    put(store, job("held"))
    first = claim(store, "held", "w1")
    assert first.attempts == 1
    assert store.requeue({"held": "w1"}) == {"held"}  # its worker died while it waited
    back = store.get("held")
    assert back is not None and back.status == "queued" and back.attempts == 0
    second = claim(store, "held", "w2")
    assert second.attempts == 1
    assert second.token > first.token  # a new claim, whatever was charged
    assert store.mark_on_device({"held": second.token}) == set()
    assert store.requeue({"held": "w2"}) == {"held"}  # died on the device: charged
    charged = store.get("held")
    assert charged is not None and charged.attempts == 1
    assert charged.device == second.token


def test_a_batch_starts_in_one_step_that_tells_the_runs_that_must_not(store: JobStore
                                                                        ) -> None:
    for name in ("ok", "flagged", "moved"):
        put(store, job(name))
    runs = {name: claim(store, name, "w1").token for name in ("ok", "flagged", "moved")}
    assert store.cancel("flagged") is not None  # running: its flag is set
    assert store.requeue({"moved": "w1"}) == {"moved"}  # taken for dead: the claim is over
    assert store.start_on_device(runs) == {"flagged": "canceled", "moved": "lost"}
    ok, flagged = store.get("ok"), store.get("flagged")
    assert ok is not None and ok.device == runs["ok"]  # marked: a loss now costs an attempt
    assert flagged is not None and flagged.device != runs["flagged"]  # it never starts
    assert store.start_on_device({}) == {}


def test_writes_of_a_run_whose_claim_is_over_are_refused(store: JobStore) -> None:
    put(store, job("a"))
    stale = claim(store, "a", "w1")
    assert store.requeue({"a": "w1"}) == {"a"}  # w1 was taken for dead
    fresh = claim(store, "a", "w1")  # the same worker name, a new claim
    assert fresh.token != stale.token
    old, new = stale.token, fresh.token
    seen = store.events("a")[-1].seq
    assert store.stopped_among({"a": old}) == {"a": "lost"}
    assert store.stopped_among({"a": new}) == {}
    assert store.mark_on_device({"a": old}) == {"a"}
    with pytest.raises(StaleClaim):
        store.append_event("a", "preview", {"name": "p.png"}, token=old)
    with pytest.raises(StaleClaim):
        store.put_artifact("a", "image-0.png", b"stale", "image/png", token=old)
    with pytest.raises(StaleClaim):
        store.count_blob("a", 100, token=old)
    store.progress({"a": old}, 5, 10)  # skipped, not raised
    assert store.finish([Outcome("a", "succeeded", output={"x": "stale"}, worker="w1",
                                 token=old)]) == [False]
    assert store.events("a", seen) == []  # nothing of the stale run's got through
    store.put_artifact("a", "image-0.png", b"fresh", "image/png", token=new)
    store.progress({"a": new}, 1, 10)
    assert store.finish([Outcome("a", "succeeded", output={"x": "fresh"}, worker="w1",
                                 token=new)]) == [True]
    done = store.get("a")
    assert done is not None and done.output == {"x": "fresh"}
    assert done.progress == {"step": 1, "total": 10}
    assert store.get_artifact("a", "image-0.png") == (b"fresh", "image/png")
    # the run is over: its own token is stale now too
    with pytest.raises(StaleClaim):
        store.append_event("a", "progress", {"step": 2}, token=new)
    assert store.stopped_among({"a": new}) == {"a": "lost"}
    assert [e.type for e in store.events("a", seen)] == ["progress", "output", "status"]


def test_an_owners_stored_bytes_are_bounded(store: JobStore) -> None:
    store.max_owner_bytes = 5000
    big = job("a", input={"image": "x" * 3000})
    put(store, big)
    used = store.stored_bytes("alice")
    assert 3000 < used < 3100
    store.put_artifact("a", "image-0.png", b"\x89PNG" + b"\x00" * 1500, "image/png")
    assert store.stored_bytes("alice") == used + 1504
    over, alone = store.accept([job("b", input=big.input),  # 3000 more would pass the bound
                                job("c", input={"image": "x" * 6000})], 100, 100)
    assert isinstance(over, QueueFull) and over.whose == "bytes"
    assert isinstance(alone, QueueFull) and alone.whose == "size"
    assert store.get("b") is None and store.get("c") is None
    put(store, job("d", owner="bob", input=big.input))  # another owner's bound
    assert store.stored_bytes("bob") == used


class _Locked:
    """A SQLite connection whose every statement finds the database locked."""

    def execute(self, *_: Any) -> Any:
        raise sqlite3.OperationalError("database is locked")


@pytest.mark.parametrize("read", [
    lambda s: s.get("a"), lambda s: s.list("alice", None, None, 10, None),
    lambda s: s.count_queued(), lambda s: s.count_queued("alice"),
    lambda s: s.stored_bytes("alice"), lambda s: s.stopped_among({"a": 1}),
    lambda s: s.stale_queued(0), lambda s: s.running_jobs(), lambda s: s.events("a"),
    lambda s: s.events_many({"a": 0}), lambda s: s.get_artifact("a", "x.png"),
    lambda s: s.artifact_names("a"), lambda s: s.workers(), lambda s: s.ping()])
def test_every_sqlite_read_of_a_locked_database_is_store_unavailable(
        tmp_path: Path, read: Any) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    put(store, job("a"))
    store._local.db = _Locked()
    with pytest.raises(StoreUnavailable):
        read(store)


def test_the_lua_scripts_ship_and_are_called_by_name() -> None:
    import fnmatch
    import tomllib

    from core.store.scripts import SCRIPTS, Script

    root = Path(__file__).resolve().parents[2]
    files = sorted(p.name for p in (root / "core/store/lua").glob("*.lua"))
    assert files == sorted(f"{name}.lua" for name in SCRIPTS)
    shipped = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["core"]
    assert all(any(fnmatch.fnmatch(f"store/lua/{f}", p) for p in shipped) for f in files)
    append = Script.load("append")
    assert append.source.startswith("local job = KEYS[1]\nlocal events = KEYS[2]\n")
    keys, args = append.bind(token=None, data="{}", job="j", events="e", type="log",
                             events_ttl=60, progress=None)  # any order; None travels as ''
    assert (keys, args) == (["j", "e"], ["log", "{}", 60, "", ""])
    keys, args = Script.load("put_artifact").bind(
        job="j", artifacts="a", token=3, ttl=60, usage_prefix="u", bucket=1, bucket_ttl=90,
        size=2, fields=["d:x", b"xy", "t:x", "image/png"])
    assert args[-4:] == ["d:x", b"xy", "t:x", "image/png"]
    with pytest.raises(TypeError, match="missing"):
        append.bind(job="j")
    with pytest.raises(TypeError, match="unknown"):
        Script.load("mark").bind(job="j", token=1, worker="w")
