"""The distributed store on Redis: job hashes, per-job Streams for events, TTLs for retention.

Transitions run as Lua scripts, so a claim, a finish or a requeue is one atomic step no
matter how many API hosts and workers share the Redis.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import redis

from workers.store.base import (
    MUTABLE,
    QUEUED,
    Event,
    JobStore,
    QueueFull,
    StaleClaim,
    StoreFull,
    StoreUnavailable,
    age_s,
    input_size,
    now_iso,
    usage_buckets,
)

T = TypeVar("T")
P = "convoy:"
USAGE = f"{P}bytes:"  # + owner + ':' + bucket: the bytes the owner stored in that time
FINISHED = f"{P}finished"  # channel: each finish publishes [id, field, value, ...]
log = logging.getLogger(__name__)

# The owner's queued set is named from the job's owner inside the script (one round trip
# instead of a read first); this needs a single Redis, not a cluster.
_OWNER = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then owner = cjson.decode(redis.call('HGET', KEYS[1], 'fixed'))['owner'] end
"""
# KEYS: job, queued, running, events. ARGV: worker, started_at, id, owner-set prefix,
# events ttl, '1' to append the running event. → the job, or its status, or 'missing'
_CLAIM = """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return 'missing' end
if s ~= 'queued' then return s end
""" + _OWNER + """
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[1], 'started_at', ARGV[2])
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HINCRBY', KEYS[1], 'token', 1)
redis.call('SREM', KEYS[2], ARGV[3]); redis.call('SREM', ARGV[4] .. owner, ARGV[3])
redis.call('SADD', KEYS[3], ARGV[3])
if ARGV[6] == '1' then
  local n = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  redis.call('XADD', KEYS[4], n .. '-1', 'type', 'status',
             'data', '{"status": "running", "attempt": ' .. attempt .. '}')
  redis.call('EXPIRE', KEYS[4], ARGV[5])
end
return redis.call('HGETALL', KEYS[1])
"""
# KEYS: job, queued, running, events, finished channel. ARGV: worker ('' for any), status,
# output, error, finished_at, id, owner-set prefix, events ttl, '1' to return the job, the
# claim's token ('' for any), then (type, data) of each event to append. → the job (or 1),
# or 0 if it was not ours to finish
_FINISH = """
local s = redis.call('HGET', KEYS[1], 'status')
if not s or s == 'succeeded' or s == 'failed' or s == 'canceled' then return 0 end
if ARGV[1] ~= '' and (s ~= 'running' or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1]) then
  return 0
end
if ARGV[10] ~= '' and (s ~= 'running' or redis.call('HGET', KEYS[1], 'token') ~= ARGV[10]) then
  return 0
end
""" + _OWNER + """
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'output', ARGV[3], 'error', ARGV[4],
           'finished_at', ARGV[5])
redis.call('SREM', KEYS[2], ARGV[6]); redis.call('SREM', ARGV[7] .. owner, ARGV[6])
redis.call('SREM', KEYS[3], ARGV[6])
for i = 11, #ARGV, 2 do
  local n = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  redis.call('XADD', KEYS[4], n .. '-1', 'type', ARGV[i], 'data', ARGV[i + 1])
  redis.call('EXPIRE', KEYS[4], ARGV[8])
end
local all = redis.call('HGETALL', KEYS[1])
local changed = {ARGV[6]}
for i = 1, #all, 2 do
  if all[i] ~= 'fixed' then changed[#changed + 1] = all[i]; changed[#changed + 1] = all[i + 1] end
end
redis.call('PUBLISH', KEYS[5], cjson.encode(changed))
if ARGV[9] == '1' then return all end
return 1
"""
# KEYS: job, counter, owner's jobs, queued, owner's queued, events, the owner's stored-bytes
# buckets (the current first). ARGV: fixed, ttl, id, owner, the first event's (type, data)
# or ('', ''), the input's bytes, a bucket's ttl. → 1 if created, else the existing job
_CREATE_BODY = """
local n = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'status', 'queued', 'attempts', 0, 'seq', 0, 'n', n, 'cancel', 0,
           'owner', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[3], n, ARGV[3])
redis.call('SADD', KEYS[4], ARGV[3]); redis.call('SADD', KEYS[5], ARGV[3])
redis.call('INCRBY', KEYS[7], ARGV[7]); redis.call('EXPIRE', KEYS[7], ARGV[8])
"""
# KEYS: as _CREATE. ARGV: as _CREATE, then the owner's limit, everyone's limit, the bound
# of the owner's stored bytes (0: none). → 1 if created, 'owner', 'all', 'size' or 'bytes'
# at a limit, else the existing job
_ACCEPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HGETALL', KEYS[1]) end
if redis.call('SCARD', KEYS[5]) >= tonumber(ARGV[9]) then return 'owner' end
if redis.call('SCARD', KEYS[4]) >= tonumber(ARGV[10]) then return 'all' end
local bound = tonumber(ARGV[11])
if bound > 0 then
  if tonumber(ARGV[7]) > bound then return 'size' end
  local used = tonumber(ARGV[7])
  for i = 7, #KEYS do used = used + tonumber(redis.call('GET', KEYS[i]) or '0') end
  if used > bound then return 'bytes' end
end
redis.call('HSET', KEYS[1], 'fixed', ARGV[1])
""" + _CREATE_BODY + """
redis.call('HSET', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[6], '1-1', 'type', ARGV[5], 'data', ARGV[6])
redis.call('EXPIRE', KEYS[6], ARGV[2])
return 1
"""
_CREATE = """
if redis.call('HSETNX', KEYS[1], 'fixed', ARGV[1]) == 0 then
  return redis.call('HGETALL', KEYS[1])
end
""" + _CREATE_BODY + """
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'seq', 1)
  redis.call('XADD', KEYS[6], '1-1', 'type', ARGV[5], 'data', ARGV[6])
  redis.call('EXPIRE', KEYS[6], ARGV[2])
end
return 1
"""
_REQUEUE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'device') ~= redis.call('HGET', KEYS[1], 'token') then
  redis.call('HINCRBY', KEYS[1], 'attempts', -1)  -- held, never on the device: uncharged
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'worker', '', 'progress', 'null')
redis.call('SREM', KEYS[4], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[2]); redis.call('SADD', KEYS[3], ARGV[2])
return 1
"""
# The writes of a run under its claim's token (ARGV[n], '' for an unfenced write): -1 unless
# the job runs under that claim.
def _fenced(n: int) -> str:
    return f"""
if ARGV[{n}] and ARGV[{n}] ~= '' and (redis.call('HGET', KEYS[1], 'status') ~= 'running'
    or redis.call('HGET', KEYS[1], 'token') ~= ARGV[{n}]) then return -1 end
"""


# KEYS: job, events. ARGV: type, data, events ttl, a progress field to set ('' or nothing
# for none), the claim's token ('' or nothing). → the event's sequence number, 0 if the
# job is gone, -1 if the claim is over
_APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
""" + _fenced(5) + """
if ARGV[4] and ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'progress', ARGV[4]) end
local n = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], n .. '-1', 'type', ARGV[1], 'data', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return n
"""

# KEYS: job. ARGV: token. → 1 if marked, -1 if the claim is over
_MARK = _fenced(1) + """
redis.call('HSET', KEYS[1], 'device', ARGV[1])
return 1
"""
# KEYS: job, artifacts. ARGV: token (''), ttl, the stored-bytes bucket's prefix, number and
# ttl, the data's bytes, then field, value pairs. → 1, or -1 (stale)
_PUT_ARTIFACT = _fenced(1) + """
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[2], ARGV[2])
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner then
  local bucket = ARGV[3] .. owner .. ':' .. ARGV[4]
  redis.call('INCRBY', bucket, ARGV[6]); redis.call('EXPIRE', bucket, ARGV[5])
end
return 1
"""


# KEYS: job. ARGV: token (''), the bucket's ttl, the stored-bytes prefix, bucket, bytes.
# → 1, or -1 if the claim is over
_COUNT_BLOB = _fenced(1) + """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner then
  local bucket = ARGV[3] .. owner .. ':' .. ARGV[4]
  redis.call('INCRBY', bucket, ARGV[5]); redis.call('EXPIRE', bucket, ARGV[2])
end
return 1
"""


# KEYS: the owner's stored-bytes buckets. ARGV: the bytes to take from each. A bucket keeps
# its TTL and never drops below zero; a missing one stays missing.
_REFUND = """
for i, key in ipairs(KEYS) do
  local take = math.min(tonumber(redis.call('GET', key) or '0'), tonumber(ARGV[i]))
  if take > 0 then redis.call('DECRBY', key, take) end
end
return 1
"""


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
    pushes_messages = True  # the broker is the same Redis (see workers.celery_app)
    announces_finishes = True

    def __init__(self, url: str, retention_s: int = 86400, max_owner_bytes: int = 0) -> None:
        self.retention_s = retention_s
        self.max_owner_bytes = max_owner_bytes
        self.url = url
        opts: dict[str, Any] = dict(socket_connect_timeout=2.0, retry_on_timeout=False)
        self.r = redis.Redis.from_url(url, socket_timeout=3.0, **opts)
        self._loaded: set[str] = set()
        self._reader: redis.Redis | None = None  # events_many's own connection
        self._claim = self.r.register_script(_CLAIM)
        self._accept = self.r.register_script(_ACCEPT)
        self._create = self.r.register_script(_CREATE)
        self._finish = self.r.register_script(_FINISH)
        self._requeue = self.r.register_script(_REQUEUE)
        self._append = self.r.register_script(_APPEND)
        self._mark = self.r.register_script(_MARK)
        self._put_artifact = self.r.register_script(_PUT_ARTIFACT)
        self._count_blob = self.r.register_script(_COUNT_BLOB)
        self._refund = self.r.register_script(_REFUND)

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

    def _status_keys(self, job_id: str, owner: str) -> list[str]:
        return [self._k(job_id), f"{P}queued", f"{P}queued:{owner}", f"{P}running"]

    @classmethod
    def _decode_flat(cls, flat: Any) -> dict[str, Any] | None:
        """A job from a script's HGETALL reply (a flat list), or None for a 0 reply."""
        if not isinstance(flat, list):
            return None
        it = iter(flat)
        return cls._decode(dict(zip(it, it, strict=True)))

    @classmethod
    def _decode(cls, h: dict[bytes, bytes]) -> dict[str, Any] | None:
        if not h or b"fixed" not in h:
            return None
        job: dict[str, Any] = json.loads(h[b"fixed"])
        job.update(cls._mutable({k.decode(): v.decode() for k, v in h.items() if k != b"fixed"}))
        return job

    @staticmethod
    def _mutable(h: dict[str, str]) -> dict[str, Any]:
        """The MUTABLE fields of a job hash's other fields."""
        out: dict[str, Any] = {}
        for key in MUTABLE:
            raw = h.get(key)
            if key in ("progress", "output", "error"):
                out[key] = json.loads(raw) if raw else None
            elif key == "attempts":
                out[key] = int(raw or 0)
            elif key in ("token", "device"):
                out[key] = int(raw) if raw else None
            elif key == "cancel_requested":
                out[key] = h.get("cancel", "0") == "1"
            else:
                out[key] = raw or None
        return out

    # -- records ---------------------------------------------------------------------------
    def create(self, job: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        return self._create_job(job, announce=False)

    def create_and_announce(self, job: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        return self._create_job(job, announce=True)

    @_guard
    def _create_job(self, job: dict[str, Any], announce: bool) -> tuple[dict[str, Any], bool]:
        jid, owner = job["id"], job["owner"]
        fixed = json.dumps({k: v for k, v in job.items() if k not in MUTABLE})
        first = [QUEUED[0], json.dumps(QUEUED[1])] if announce else ["", ""]
        usage, usage_ttl = self._usage(owner)
        reply = self._create(
            keys=[self._k(jid), f"{P}counter", f"{P}owner:{owner}", f"{P}queued",
                  f"{P}queued:{owner}", f"{P}events:{jid}", usage[0]],
            args=[fixed, self.retention_s, jid, owner, *first, input_size(job), usage_ttl])
        if reply != 1:
            existing = self._decode_flat(reply)
            assert existing is not None
            return existing, False
        created: dict[str, Any] = {**json.loads(fixed), **dict.fromkeys(MUTABLE)}
        created.update(status="queued", attempts=0, cancel_requested=False)
        return created, True

    def _run_many(self, script: Any, calls: list[tuple[list[str], list[Any]]],
                  transaction: bool = False, tail: list[tuple[str, str]] | None = None
                  ) -> list[Any]:
        """One script over many key sets in one round trip (then an LPUSH of each of
        ``tail``); with ``transaction``, all of it as one atomic step."""
        if script.sha not in self._loaded:  # else a pipeline would carry it in every call
            self.r.script_load(script.script)
            self._loaded.add(script.sha)
        for attempt in range(2):
            pipe = self.r.pipeline(transaction=transaction)
            for keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            for key, value in tail or ():
                pipe.lpush(key, value)
            replies = pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, redis.exceptions.NoScriptError)
                                    for r in replies):
                self.r.script_load(script.script)  # a restarted Redis forgot its scripts
                continue
            for r in replies:
                if isinstance(r, Exception):
                    raise r
            return replies[:len(calls)]
        raise AssertionError("unreachable")

    @_guard
    def accept_many(self, jobs: list[dict[str, Any]], max_mine: int, max_all: int,
                    messages: list[tuple[str, str]] | None = None
                    ) -> list[tuple[dict[str, Any], bool] | QueueFull]:
        calls = []
        for job in jobs:
            jid, owner = job["id"], job["owner"]
            fixed = json.dumps({k: v for k, v in job.items() if k not in MUTABLE})
            usage, usage_ttl = self._usage(owner)
            calls.append(([self._k(jid), f"{P}counter", f"{P}owner:{owner}", f"{P}queued",
                           f"{P}queued:{owner}", f"{P}events:{jid}", *usage],
                          [fixed, self.retention_s, jid, owner, QUEUED[0],
                           json.dumps(QUEUED[1]), input_size(job), usage_ttl, max_mine,
                           max_all, self.max_owner_bytes]))
        replies = self._run_many(self._accept, calls, transaction=True, tail=messages)
        out: list[tuple[dict[str, Any], bool] | QueueFull] = []
        for job, reply in zip(jobs, replies, strict=True):
            if reply == 1:
                created: dict[str, Any] = {**job, **dict.fromkeys(MUTABLE)}
                created.update(status="queued", attempts=0, cancel_requested=False)
                out.append((created, True))
            elif isinstance(reply, bytes):
                out.append(QueueFull(reply.decode()))
            else:
                existing = self._decode_flat(reply)
                assert existing is not None
                out.append((existing, False))
        return out

    def accept(self, job: dict[str, Any], max_mine: int, max_all: int
               ) -> tuple[dict[str, Any], bool]:
        (reply,) = self.accept_many([job], max_mine, max_all)
        if isinstance(reply, QueueFull):
            raise reply
        return reply

    @_guard
    def get(self, job_id: str) -> dict[str, Any] | None:
        return self._decode(self.r.hgetall(self._k(job_id)))  # type: ignore[arg-type]

    @_guard
    def list(
        self, owner: str, status: str | None, kind: str | None, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        zkey = f"{P}owner:{owner}"
        top: float | str = f"({cursor}" if cursor else "+inf"
        jobs: list[dict[str, Any]] = []
        last: float | None = None
        while len(jobs) < limit:
            page = self.r.zrevrangebyscore(zkey, top, "-inf", start=0, num=200, withscores=True)
            if not page:
                return jobs, None
            for raw_id, score in page:
                job = self.get(raw_id.decode())
                if job is None:
                    self.r.zrem(zkey, raw_id)  # expired
                elif (status is None or job["status"] == status) and (
                    kind is None or job["kind"] == kind
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
    def queued_counts(self, owner: str) -> tuple[int, int]:
        pipe = self.r.pipeline(transaction=False)
        pipe.scard(f"{P}queued:{owner}")
        pipe.scard(f"{P}queued")
        mine, everyone = pipe.execute()
        return int(mine), int(everyone)

    # -- transitions -------------------------------------------------------------------------
    def claim(self, job_id: str, worker: str) -> dict[str, Any] | None:
        return self._claims([job_id], worker, announce=False)[0][0]

    def claim_and_announce(self, job_id: str, worker: str) -> dict[str, Any] | None:
        return self.try_claim(job_id, worker)[0]

    def try_claim(self, job_id: str, worker: str) -> tuple[dict[str, Any] | None, str]:
        return self._claims([job_id], worker, announce=True)[0]

    def try_claim_many(self, job_ids: list[str], worker: str
                       ) -> list[tuple[dict[str, Any] | None, str]]:
        return self._claims(job_ids, worker, announce=True)

    @_guard
    def _claims(self, job_ids: list[str], worker: str, announce: bool
                ) -> list[tuple[dict[str, Any] | None, str]]:
        at = now_iso()
        replies = self._run_many(self._claim, [
            ([self._k(j), f"{P}queued", f"{P}running", f"{P}events:{j}"],
             [worker, at, j, f"{P}queued:", self.retention_s, "1" if announce else ""])
            for j in job_ids])
        return [(None, r.decode()) if isinstance(r, bytes) else (self._decode_flat(r), "running")
                for r in replies]

    @_guard
    def set_progress(self, job_id: str, step: int, total: int, token: int | None = None
                     ) -> None:
        if token is None:
            self.r.hset(self._k(job_id), "progress", json.dumps({"step": step, "total": total}))
        else:
            self.progress_many([job_id], step, total, [token], event=False)

    @_guard
    def progress_many(self, job_ids: list[str], step: int, total: int,
                      tokens: list[int] | None = None, event: bool = True) -> None:
        if not job_ids:
            return
        data = json.dumps({"step": step, "total": total})
        toks = [str(t) for t in tokens] if tokens is not None else [""] * len(job_ids)
        self._run_many(self._append, [([self._k(j), f"{P}events:{j}"],
                                       ["progress", data, self.retention_s, data, t])
                                      for j, t in zip(job_ids, toks, strict=True)])

    @_guard
    def mark_on_device(self, claims: dict[str, int]) -> set[str]:
        ids = list(claims)
        if not ids:
            return set()
        replies = self._run_many(self._mark, [([self._k(j)], [claims[j]]) for j in ids])
        return {j for j, r in zip(ids, replies, strict=True) if r != 1}

    def _mark_one(self, job_id: str, token: int) -> bool:
        return not self.mark_on_device({job_id: token})

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
    def finish(
        self, job_id: str, worker: str | None, status: str,
        output: dict[str, Any] | None = None, error: dict[str, Any] | None = None,
        token: int | None = None,
    ) -> dict[str, Any] | None:
        return self.finish_and_announce(job_id, worker, status, output, error, token,
                                        announce=False)

    def finish_and_announce(
        self, job_id: str, worker: str | None, status: str,
        output: dict[str, Any] | None = None, error: dict[str, Any] | None = None,
        token: int | None = None, announce: bool = True,
    ) -> dict[str, Any] | None:
        reply = self._finishes([(job_id, worker, status, output, error)], announce, True,
                               [token])[0]
        return self._decode_flat(reply)

    def finish_many(self, outcomes: list[tuple[str, str | None, str, dict[str, Any] | None,
                                               dict[str, Any] | None]],
                    tokens: list[int | None] | None = None) -> list[bool]:
        return [r == 1 for r in self._finishes(outcomes, announce=True, records=False,
                                               tokens=tokens)]

    @_guard
    def _finishes(self, outcomes: list[tuple[str, str | None, str, dict[str, Any] | None,
                                             dict[str, Any] | None]], announce: bool,
                  records: bool, tokens: list[int | None] | None = None) -> list[Any]:
        at = now_iso()
        calls = []
        toks = tokens or [None] * len(outcomes)
        for (job_id, worker, status, output, error), token in zip(outcomes, toks, strict=True):
            events: list[Any] = []
            if announce:
                for type_, data in self.final_events(status, output, error):
                    events += [type_, json.dumps(data)]
            calls.append((
                [self._k(job_id), f"{P}queued", f"{P}running", f"{P}events:{job_id}", FINISHED],
                [worker or "", status, json.dumps(output), json.dumps(error), at, job_id,
                 f"{P}queued:", self.retention_s, "1" if records else "",
                 "" if token is None else str(token), *events]))
        return self._run_many(self._finish, calls)

    @_guard
    def requeue(self, job_id: str, worker: str) -> bool:
        job = self.get(job_id)
        if job is None:
            return False
        return bool(self._requeue(keys=self._status_keys(job_id, job["owner"]),
                                  args=[worker, job_id]))

    @_guard
    def request_cancel(self, job_id: str) -> None:
        self.r.hset(self._k(job_id), "cancel", 1)

    @_guard
    def cancel_requested(self, job_id: str) -> bool:
        return self.r.hget(self._k(job_id), "cancel") == b"1"

    @_guard
    def canceled_among(self, job_ids: Iterable[str]) -> set[str]:
        ids = list(job_ids)
        if not ids:
            return set()
        pipe = self.r.pipeline(transaction=False)
        for j in ids:
            pipe.hget(self._k(j), "cancel")
        return {j for j, flag in zip(ids, pipe.execute(), strict=True) if flag == b"1"}

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
        seq = int(self._append(keys=[self._k(job_id), f"{P}events:{job_id}"],
                               args=[type, json.dumps(data), self.retention_s, "",
                                     "" if token is None else token]))
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
        reply = self._put_artifact(
            keys=[self._k(job_id), f"{P}art:{job_id}"],
            args=["" if token is None else token, self.retention_s, USAGE, buckets[0],
                  self.retention_s + 2 * width, len(data),
                  f"d:{name}", data, f"t:{name}", content_type])
        if reply != 1:
            raise StaleClaim(job_id)

    @_guard
    def count_blob(self, job_id: str, size: int, token: int | None = None) -> None:
        buckets, width = usage_buckets(self.retention_s)
        reply = self._count_blob(keys=[self._k(job_id)], args=[
            "" if token is None else token, self.retention_s + 2 * width, USAGE, buckets[0],
            size])
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
            self._refund(keys=[f"{USAGE}{owner}:{b}" for b in counted], args=list(counted.values()))

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
            return str(job_id), cls._mutable(dict(zip(it, it, strict=True)))
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
