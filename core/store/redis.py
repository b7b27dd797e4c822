"""The distributed store on Redis: job hashes, per-job Streams for events, TTLs for retention.

Transitions run as Lua scripts (``lua/*.lua``, see ``core.store.scripts``), so a claim,
a finish or a requeue is one atomic step no matter how many API hosts and workers share
the Redis; a batch's transitions go in one round trip.

A job is a hash: its fixed fields as one JSON value (``fixed``), the changing ones as
fields of their own (``_DECODE`` says how each reads back), and the bookkeeping of the
store (``seq``, ``n``, ``cancel``, ``owner``).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from core.job import MUTABLE
from core.store.base import (
    QUEUED,
    Accepted,
    Event,
    Job,
    JobStore,
    Outcome,
    QueueFull,
    StaleClaim,
    StoreFull,
    StoreUnavailable,
    age_s,
    input_size,
    now_iso,
    usage_buckets,
)
from core.store.scripts import SCRIPTS, Script

T = TypeVar("T")
P = "convoy:"
USAGE = f"{P}bytes:"  # + owner + ':' + bucket: the bytes the owner stored in that time
FINISHED = f"{P}finished"  # channel: each finish publishes [id, field, value, ...]
log = logging.getLogger(__name__)
# How a changing field of a job hash reads back (the others are strings; an empty field
# takes the record's default).
_DECODE: dict[str, Callable[[str], Any]] = {
    "progress": json.loads, "output": json.loads, "error": json.loads,
    "attempts": int, "token": int, "device": int}
_SCRIPTS = {name: Script.load(name) for name in SCRIPTS}


def _guard(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn connection trouble into StoreUnavailable (the API answers 503)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except redis.exceptions.OutOfMemoryError as e:
            raise StoreFull(f"redis is full: {e}") from e
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as e:
            raise StoreUnavailable(f"redis: {e}") from e

    return wrapper


class RedisStore(JobStore):
    pushes_messages = True  # the broker is the same Redis (see core.celery_app)
    announces_finishes = True

    def __init__(self, url: str, retention_s: int = 86400, max_owner_bytes: int = 0) -> None:
        self.retention_s = retention_s
        self.max_owner_bytes = max_owner_bytes
        self.url = url
        opts: dict[str, Any] = {"socket_connect_timeout": 2.0, "retry_on_timeout": False}
        self.r = redis.Redis.from_url(url, socket_timeout=3.0, **opts)
        self._loaded: set[str] = set()  # the scripts this Redis was given
        self._reader: redis.Redis | None = None  # events_many's own connection

    @staticmethod
    def _k(job_id: str) -> str:
        return f"{P}job:{job_id}"

    def _usage(self, owner: str) -> tuple[list[str], int]:
        """(the owner's stored-bytes bucket keys, the current first; a bucket's ttl)."""
        buckets, width = usage_buckets(self.retention_s)
        return [f"{USAGE}{owner}:{b}" for b in buckets], self.retention_s + 2 * width

    @_guard
    def stored_bytes(self, owner: str) -> int:
        keys, _ = self._usage(owner)
        return sum(int(v) for v in self.r.mget(keys) if v is not None)

    @classmethod
    def _decode_flat(cls, flat: list[bytes]) -> Job | None:
        """A job from a script's HGETALL reply (a flat list)."""
        it = iter(flat)
        return cls._decode(dict(zip(it, it, strict=True)))

    @classmethod
    def _decode(cls, h: dict[bytes, bytes]) -> Job | None:
        if not h or b"fixed" not in h:
            return None
        fields = json.loads(h[b"fixed"])
        fields.update(cls._changing({k.decode(): v.decode() for k, v in h.items()
                                     if k != b"fixed"}))
        return Job.from_fields(fields)

    @staticmethod
    def _changing(h: dict[str, str]) -> dict[str, Any]:
        """The changing fields of a job hash's other fields."""
        out: dict[str, Any] = {name: _DECODE.get(name, str)(h[name]) for name in MUTABLE
                               if h.get(name)}
        out["cancel_requested"] = h.get("cancel", "0") == "1"
        return out

    def _eval(self, calls: list[tuple[Script, tuple[list[Any], list[Any]]]],
              transaction: bool = False, tail: list[tuple[str, str]] | None = None
              ) -> list[Any]:
        """Scripts with their bound keys and arguments in one round trip (then an LPUSH of
        each of ``tail``); with ``transaction``, all of it as one atomic step."""
        for script in {s for s, _ in calls}:
            if script.sha not in self._loaded:  # else a pipeline would carry it in every call
                self.r.script_load(script.source)
                self._loaded.add(script.sha)
        for attempt in range(2):
            pipe = self.r.pipeline(transaction=transaction)
            for script, (keys, args) in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            for key, value in tail or ():
                pipe.lpush(key, value)
            replies = pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, redis.exceptions.NoScriptError)
                                    for r in replies):
                for script in {s for s, _ in calls}:  # a restarted Redis forgot its scripts
                    self.r.script_load(script.source)
                continue
            for r in replies:
                if isinstance(r, Exception):
                    raise r
            return replies[:len(calls)]
        raise AssertionError("unreachable")

    def _job_keys(self, job_id: str) -> dict[str, str]:
        return {"job": self._k(job_id), "queued": f"{P}queued", "running": f"{P}running",
                "events": f"{P}events:{job_id}"}

    # -- transitions -------------------------------------------------------------------------
    @_guard
    def accept(self, jobs: list[Job], max_mine: int, max_all: int,
               messages: list[tuple[str, str]] | None = None) -> list[Accepted]:
        script = _SCRIPTS["accept"]
        buckets, width = usage_buckets(self.retention_s)
        first = json.dumps(QUEUED[1])
        calls = [(script, script.bind(
            job=self._k(job.id), counter=f"{P}counter", owner_jobs=f"{P}owner:{job.owner}",
            queued=f"{P}queued", owner_queued=f"{P}queued:{job.owner}",
            events=f"{P}events:{job.id}",
            id=job.id, owner=job.owner, fixed=json.dumps(job.fixed()), ttl=self.retention_s,
            first_type=QUEUED[0], first_data=first, size=input_size(job), usage_prefix=USAGE,
            bucket=buckets[0], buckets=len(buckets), usage_ttl=self.retention_s + 2 * width,
            max_mine=max_mine, max_all=max_all, max_bytes=self.max_owner_bytes))
            for job in jobs]
        replies = self._eval(calls, transaction=True, tail=messages)
        out: list[Accepted] = []
        for job, reply in zip(jobs, replies, strict=True):
            if reply == 1:
                out.append((Job.from_fields({**job.fixed(), "status": "queued"}), True))
            elif isinstance(reply, bytes):
                out.append(QueueFull(reply.decode()))
            else:
                existing = self._decode_flat(reply)
                assert existing is not None
                out.append((existing, False))
        return out

    @_guard
    def claim(self, job_ids: list[str], worker: str) -> list[Job | str]:
        script, at = _SCRIPTS["claim"], now_iso()
        replies = self._eval([(script, script.bind(
            **self._job_keys(j), id=j, worker=worker, started_at=at,
            owner_prefix=f"{P}queued:", events_ttl=self.retention_s)) for j in job_ids])
        out: list[Job | str] = []
        for reply in replies:
            job = None if isinstance(reply, bytes) else self._decode_flat(reply)
            out.append(reply.decode() if isinstance(reply, bytes) else job or "missing")
        return out

    @_guard
    def progress(self, claims: dict[str, int], step: int, total: int) -> None:
        if not claims:
            return
        script, data = _SCRIPTS["append"], json.dumps({"step": step, "total": total})
        self._eval([(script, script.bind(
            job=self._k(j), events=f"{P}events:{j}", type="progress", data=data,
            events_ttl=self.retention_s, progress=data, token=token))
            for j, token in claims.items()])

    @_guard
    def mark_on_device(self, claims: dict[str, int]) -> set[str]:
        if not claims:
            return set()
        return {j for j, why in self.start_on_device(claims).items() if why == "lost"}

    @_guard
    def start_on_device(self, claims: dict[str, int]) -> dict[str, str]:
        if not claims:
            return {}
        script = _SCRIPTS["mark"]
        replies = self._eval([(script, script.bind(job=self._k(j), token=token))
                              for j, token in claims.items()])
        return {j: "lost" if r == -1 else "canceled"
                for j, r in zip(claims, replies, strict=True) if r != 1}

    def _finish_call(self, o: Outcome, at: str) -> tuple[Script, tuple[list[Any], list[Any]]]:
        script = _SCRIPTS["finish"]
        final = [part for type_, data in o.events() for part in (type_, json.dumps(data))]
        return script, script.bind(
            **self._job_keys(o.job_id), finished=FINISHED, id=o.job_id, worker=o.worker,
            token=o.token, if_status=o.if_status, status=o.status,
            output=json.dumps(o.output), error=json.dumps(o.error), finished_at=at,
            owner_prefix=f"{P}queued:", events_ttl=self.retention_s, final=final)

    @_guard
    def finish(self, outcomes: list[Outcome]) -> list[bool]:
        if not outcomes:
            return []
        at = now_iso()
        return [r == 1 for r in self._eval([self._finish_call(o, at) for o in outcomes])]

    @_guard
    def requeue(self, held: dict[str, str]) -> set[str]:
        if not held:
            return set()
        script = _SCRIPTS["requeue"]
        replies = self._eval([(script, script.bind(
            **self._job_keys(j), id=j, worker=worker, owner_prefix=f"{P}queued:",
            events_ttl=self.retention_s)) for j, worker in held.items()])
        return {j for j, r in zip(held, replies, strict=True) if r == 1}

    @_guard
    def cancel(self, job_id: str) -> Job | None:
        flag = _SCRIPTS["cancel"]
        self._eval([(flag, flag.bind(job=self._k(job_id))),
                    self._finish_call(Outcome(job_id, "canceled", if_status="queued"),
                                      now_iso())], transaction=True)
        return self.get(job_id)

    # -- reads -------------------------------------------------------------------------------
    @_guard
    def get(self, job_id: str) -> Job | None:
        return self._decode(self.r.hgetall(self._k(job_id)))  # type: ignore[arg-type]

    @_guard
    def list(
        self, owner: str, status: str | None, kind: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Job], str | None]:
        zkey = f"{P}owner:{owner}"
        top: float | str = f"({cursor}" if cursor else "+inf"
        jobs: list[Job] = []
        last: float | None = None
        while len(jobs) < limit:
            page = self.r.zrevrangebyscore(zkey, top, "-inf", start=0, num=200, withscores=True)
            if not page:
                return jobs, None
            for raw_id, score in page:
                job = self.get(raw_id.decode())
                if job is None:
                    self.r.zrem(zkey, raw_id)  # expired
                elif (status is None or job.status == status) and (
                    kind is None or job.kind == kind
                ):
                    jobs.append(job)
                    last = score
                    if len(jobs) == limit:
                        break
                top = f"({int(score)}"
        more = self.r.zrevrangebyscore(zkey, f"({int(last)}", "-inf", start=0, num=1) if last else []
        return jobs, (str(int(last)) if more and last is not None else None)

    @_guard
    def count_queued(self, owner: str | None = None) -> int:
        return int(self.r.scard(f"{P}queued" if owner is None else f"{P}queued:{owner}"))

    @_guard
    def stopped_among(self, claims: dict[str, int]) -> dict[str, str]:
        ids = list(claims)
        if not ids:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for j in ids:
            pipe.hmget(self._k(j), ["status", "token", "cancel"])
        out = {}
        for j, (status, token, cancel) in zip(ids, pipe.execute(), strict=True):
            if status != b"running" or token != str(claims[j]).encode():
                out[j] = "lost"
            elif cancel == b"1":
                out[j] = "canceled"
        return out

    @_guard
    def stale_queued(self, older_than_s: float) -> list[tuple[str, str]]:
        ids = [raw.decode() for raw in self.r.smembers(f"{P}queued")]
        pipe = self.r.pipeline(transaction=False)
        for j in ids:
            pipe.hmget(self._k(j), ["fixed", "status"])
        out = []
        for j, (fixed, status) in zip(ids, pipe.execute(), strict=True):
            if fixed is None or status != b"queued":
                continue
            job = json.loads(fixed)
            if age_s(job.get("created_at")) > older_than_s:
                out.append((j, job.get("queue") or "convoy"))
        return out

    @_guard
    def running_jobs(self) -> list[tuple[str, str]]:
        out = []
        for raw in self.r.smembers(f"{P}running"):
            worker = self.r.hget(self._k(raw.decode()), "worker")
            if worker is None:
                self.r.srem(f"{P}running", raw)  # expired record
                continue
            out.append((raw.decode(), worker.decode()))
        return out

    # -- events ------------------------------------------------------------------------------
    @_guard
    def append_event(self, job_id: str, type: str, data: dict[str, Any],
                     token: int | None = None) -> int:
        script = _SCRIPTS["append"]
        (seq,) = self._eval([(script, script.bind(
            job=self._k(job_id), events=f"{P}events:{job_id}", type=type, data=json.dumps(data),
            events_ttl=self.retention_s, progress=None, token=token))])
        if seq == 0:
            raise KeyError(job_id)
        if seq < 0:
            raise StaleClaim(job_id)
        return seq

    @_guard
    def events(self, job_id: str, after: int = 0, block_s: float = 0.0) -> list[Event]:
        key = f"{P}events:{job_id}"
        if block_s > 0:
            found = self.r.xread({key: f"{after}-1"}, block=max(1, int(block_s * 1000)))
            rows = found[0][1] if found else []
        else:
            rows = self.r.xrange(key, min=f"({after}-1", max="+")
        return [
            Event(int(entry_id.split(b"-")[0]), f[b"type"].decode(), json.loads(f[b"data"]))
            for entry_id, f in rows
        ]

    @_guard
    def events_many(self, after: dict[str, int], block_s: float = 0.0
                    ) -> dict[str, list[Event]]:
        """One ``XREAD`` over all the jobs' streams, on a connection of its own (not the
        pool's: a read that blocks must not take a connection that submissions need).
        Meant for one caller thread per store, the API's event reader."""
        if self._reader is None:
            self._reader = redis.Redis.from_url(
                self.url, socket_connect_timeout=2.0, socket_timeout=block_s + 5.0,
                single_connection_client=True)
        streams = {f"{P}events:{j}": f"{seq}-1" for j, seq in after.items()}
        found = self._reader.xread(streams, block=max(1, int(block_s * 1000))
                                   ) if block_s > 0 else self._reader.xread(streams)
        return {
            key.decode().removeprefix(f"{P}events:"): [
                Event(int(entry_id.split(b"-")[0]), f[b"type"].decode(), json.loads(f[b"data"]))
                for entry_id, f in rows]
            for key, rows in found or [] if rows
        }

    # -- artifacts ---------------------------------------------------------------------------
    @_guard
    def put_artifact(self, job_id: str, name: str, data: bytes, content_type: str,
                     token: int | None = None) -> None:
        buckets, width = usage_buckets(self.retention_s)
        script = _SCRIPTS["put_artifact"]
        (reply,) = self._eval([(script, script.bind(
            job=self._k(job_id), artifacts=f"{P}art:{job_id}", token=token,
            ttl=self.retention_s, usage_prefix=USAGE, bucket=buckets[0],
            bucket_ttl=self.retention_s + 2 * width, size=len(data),
            fields=[f"d:{name}", data, f"t:{name}", content_type]))])
        if reply != 1:
            raise StaleClaim(job_id)

    @_guard
    def count_blob(self, job_id: str, size: int, token: int | None = None) -> None:
        buckets, width = usage_buckets(self.retention_s)
        script = _SCRIPTS["count_blob"]
        (reply,) = self._eval([(script, script.bind(
            job=self._k(job_id), token=token, usage_prefix=USAGE, bucket=buckets[0],
            bucket_ttl=self.retention_s + 2 * width, size=size))])
        if reply != 1:
            raise StaleClaim(job_id)

    @_guard
    def count_owner_bytes(self, owner: str, size: int) -> None:
        keys, ttl = self._usage(owner)
        pipe = self.r.pipeline()
        pipe.incrby(keys[0], size)
        pipe.expire(keys[0], ttl)
        pipe.execute()

    @_guard
    def refund_owner_bytes(self, owner: str, counted: dict[int, int]) -> None:
        if counted:
            script = _SCRIPTS["refund"]
            self._eval([(script, script.bind(buckets=[f"{USAGE}{owner}:{b}" for b in counted],
                                             sizes=list(counted.values())))])

    @_guard
    def get_artifact(self, job_id: str, name: str) -> tuple[bytes, str] | None:
        data, ctype = self.r.hmget(f"{P}art:{job_id}", [f"d:{name}", f"t:{name}"])
        return (data, ctype.decode()) if data is not None and ctype is not None else None

    @_guard
    def artifact_names(self, job_id: str) -> list[str]:
        return sorted(k.decode()[2:] for k in self.r.hkeys(f"{P}art:{job_id}")
                      if k.startswith(b"t:"))

    # -- workers -----------------------------------------------------------------------------
    @_guard
    def heartbeat(self, worker: str, info: dict[str, Any], ttl_s: float) -> None:
        pipe = self.r.pipeline()
        pipe.set(f"{P}worker:{worker}", json.dumps(info), px=int(ttl_s * 1000))
        pipe.zadd(f"{P}workers", {worker: time.time() + ttl_s})
        pipe.execute()

    @_guard
    def workers(self) -> list[dict[str, Any]]:
        now = time.time()
        self.r.zremrangebyscore(f"{P}workers", "-inf", now - 3600)
        ids = [w.decode() for w in self.r.zrangebyscore(f"{P}workers", now, "+inf")]
        infos = self.r.mget([f"{P}worker:{w}" for w in ids]) if ids else []
        return [{"id": w, **json.loads(i)} for w, i in zip(ids, infos, strict=True) if i]

    @_guard
    def remove_worker(self, worker: str) -> None:
        self.r.delete(f"{P}worker:{worker}")
        self.r.zrem(f"{P}workers", worker)

    # -- upkeep ------------------------------------------------------------------------------
    @_guard
    def ping(self) -> None:
        self.r.ping()

    @_guard
    def delete(self, job_id: str) -> bool:
        owner = self.r.hget(self._k(job_id), "owner")
        if owner is None:
            return False
        who = owner.decode()
        pipe = self.r.pipeline()  # MULTI: the record and its traces go together
        pipe.delete(self._k(job_id), f"{P}events:{job_id}", f"{P}art:{job_id}")
        pipe.zrem(f"{P}owner:{who}", job_id)
        pipe.srem(f"{P}queued", job_id)
        pipe.srem(f"{P}queued:{who}", job_id)
        pipe.srem(f"{P}running", job_id)
        return bool(pipe.execute()[0])

    def purge_expired(self) -> int:
        return 0  # keys carry their own TTLs; stale index entries are dropped lazily

    def close(self) -> None:
        self.r.close()
        if self._reader is not None:
            self._reader.close()

    @classmethod
    def _announced(cls, data: bytes) -> tuple[str, dict[str, Any]] | None:
        """(job id, changed fields) of a FINISHED announcement; None for a malformed one."""
        try:
            job_id, *flat = json.loads(data)
            it = iter(flat)
            return str(job_id), cls._changing(dict(zip(it, it, strict=True)))
        except (ValueError, TypeError):
            log.warning("a malformed finish announcement: %.200r", data)
            return None

    def listen_finished(self, on_finished: Callable[[list[tuple[str, dict[str, Any]]]], None],
                        stop: threading.Event) -> None:
        """Follow the FINISHED channel on a connection of its own, resubscribing after a
        connection loss (finishes in the gap are missed: waiters read the record again).
        The announcements that arrived together (a batch's) are handed over together."""
        down = False
        while not stop.is_set():
            client = redis.Redis.from_url(self.url, socket_connect_timeout=2.0,
                                          health_check_interval=10)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(FINISHED)
                if down:
                    log.warning("finish announcements resumed")
                    down = False
                while not stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    finished = []
                    while message is not None and len(finished) < 1024:
                        if message["type"] == "message":
                            found = self._announced(message["data"])
                            if found is not None:
                                finished.append(found)
                        message = pubsub.get_message(timeout=0.0)
                    if finished:
                        on_finished(finished)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                if not down:
                    log.warning("finish announcements interrupted (%s); resubscribing", e)
                    down = True
                stop.wait(1.0)
            finally:
                pubsub.close()
                client.close()
