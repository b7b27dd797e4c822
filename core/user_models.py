"""The runtime catalog: models that ``finetune`` jobs made, each owned by the key that
submitted the job, kept in the store beside the job records.

A fine-tuned model must be servable the moment its job succeeds, by every inference worker,
without a restart and without a catalog file to edit: so its entry lives in the store
(SQLite table or Redis hash, per owner) and its weights in the blob store under
``models/<id>/`` (kept until the model is deleted, not swept with job retention). Entries
are looked up by (owner, name): another owner neither lists, uses nor deletes them, and a
name of the file catalog always wins (``resolve`` asks the catalog first; submissions of a
catalog name are refused).

A worker that serves one fetches its weights and sidecar once into a local folder named by
their SHA-256, so that a model deleted and made again under the same name never serves the
old weights.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from core.blobs import KEPT_PREFIX, BlobStore, check_key
from core.sqlite_local import ThreadLocalDB
from core.store.base import JobStore, StoreUnavailable
from core.store.redis_errors import redis_call
from models.catalog import Catalog, ModelEntry, ModelNotFound
from models.kinds.finetune import NAME_PATTERN

_NAME = re.compile(NAME_PATTERN)


def model_prefix(model_id: str) -> str:
    return check_key(f"{KEPT_PREFIX}{model_id}") + "/"


class UserModels(ABC):
    """Records of fine-tuned models: JSON objects with at least owner, name, entry."""

    @abstractmethod
    def put(self, record: dict[str, Any]) -> None: ...

    @abstractmethod
    def get(self, owner: str, name: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def list(self, owner: str) -> list[dict[str, Any]]: ...

    @abstractmethod
    def delete(self, owner: str, name: str) -> bool: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS user_models (owner TEXT NOT NULL, name TEXT NOT NULL,
    record TEXT NOT NULL, PRIMARY KEY (owner, name));
"""


class SQLiteUserModels(UserModels):
    def __init__(self, path: Any) -> None:
        self.path = path
        self._db = ThreadLocalDB(path, _SCHEMA)

    def _run(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        try:
            cur = self._db().execute(sql, args)
            return [cur.rowcount, *cur.fetchall()]
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"sqlite: {e}") from e

    def put(self, record: dict[str, Any]) -> None:
        self._run("INSERT OR REPLACE INTO user_models VALUES (?, ?, ?)",
                  (record["owner"], record["name"], json.dumps(record)))

    def get(self, owner: str, name: str) -> dict[str, Any] | None:
        rows = self._run("SELECT record FROM user_models WHERE owner = ? AND name = ?",
                         (owner, name))[1:]
        return json.loads(rows[0][0]) if rows else None

    def list(self, owner: str) -> list[dict[str, Any]]:
        rows = self._run("SELECT record FROM user_models WHERE owner = ? ORDER BY name",
                         (owner,))[1:]
        return [json.loads(r[0]) for r in rows]

    def delete(self, owner: str, name: str) -> bool:
        return bool(self._run("DELETE FROM user_models WHERE owner = ? AND name = ?",
                              (owner, name))[0] > 0)


_P = "convoy:models:"


class RedisUserModels(UserModels):
    def __init__(self, client: Any) -> None:
        self.r = client

    def put(self, record: dict[str, Any]) -> None:
        redis_call(self.r.hset, f"{_P}{record['owner']}", record["name"], json.dumps(record))

    def get(self, owner: str, name: str) -> dict[str, Any] | None:
        raw = redis_call(self.r.hget, f"{_P}{owner}", name)
        return None if raw is None else json.loads(raw)

    def list(self, owner: str) -> list[dict[str, Any]]:
        raw = redis_call(self.r.hgetall, f"{_P}{owner}")
        return sorted((json.loads(v) for v in raw.values()), key=lambda r: r["name"])

    def delete(self, owner: str, name: str) -> bool:
        return bool(redis_call(self.r.hdel, f"{_P}{owner}", name))


def open_user_models(store: JobStore) -> UserModels | None:
    """The runtime catalog beside a store (None for a store of another kind: no
    fine-tuned models there)."""
    from core.store.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        return SQLiteUserModels(store.path)
    from core.store.redis import RedisStore

    if isinstance(store, RedisStore):
        return RedisUserModels(store.r)
    return None


def check_name(name: str, catalog: Catalog) -> None:
    """A new model's name: lower-case, short, and never one of the file catalog's."""
    from core.errors import InvalidInput

    if not _NAME.match(name):
        raise InvalidInput(f"model name {name!r} must match {NAME_PATTERN}")
    if name in catalog.entries:
        raise InvalidInput(f"model name {name!r} is a catalog model's; choose another")


def entry_of(record: dict[str, Any], weights: Path | None = None) -> ModelEntry:
    """The record as a catalog entry (``weights``: where a worker keeps a local copy)."""
    return ModelEntry(**{**record["entry"], "weights": weights})


def resolve(catalog: Catalog, models: UserModels | None, owner: str, name: str) -> ModelEntry:
    """The catalog's entry of ``name``, else the owner's fine-tuned model of that name
    (ModelNotFound for anyone else's)."""
    try:
        return catalog.get(name)
    except ModelNotFound:
        record = None if models is None else models.get(owner, name)
        if record is None:
            raise
        return entry_of(record)


class LocalWeights:
    """Fine-tuned weights fetched from the blob store into ``folder/<sha256>/`` (once)."""

    def __init__(self, folder: Path, blobs: BlobStore) -> None:
        self.folder = Path(folder)
        self.blobs = blobs
        self._lock = threading.Lock()

    def entry(self, record: dict[str, Any]) -> ModelEntry:
        """The record's entry with local weights; named by content, so that the model
        cache never mixes two owners' (or two versions') models of one name."""
        sha = record["weights_sha256"]
        local = self.folder / sha / "model.safetensors"
        with self._lock:
            if not local.exists():
                local.parent.mkdir(parents=True, exist_ok=True)
                for key, path in ((record["sidecar_key"], local.with_suffix(".json")),
                                  (record["weights_key"], local)):
                    data = self.blobs.read(key)
                    if data is None:
                        raise ModelNotFound(record["name"])
                    tmp = path.with_suffix(path.suffix + ".part")
                    tmp.write_bytes(data)
                    tmp.replace(path)
        entry = entry_of(record, local)
        return entry.model_copy(update={"name": f"finetuned-{sha[:16]}", "sha256": sha})
