"""The blob store: the bytes of inputs, previews and outputs, kept out of the job store.

A Stable-Diffusion-sized job (512x512, n=4, previews every step) writes tens of megabytes
of PNGs; kept in Redis under ``noeviction`` a burst of them fills it and every route
answers 503. The job store therefore keeps records, events and *references*; the bytes go
here. Two implementations share one interface:

- ``FolderBlobs``: files under the data dir (the embedded default, nothing to set up);
- ``S3Blobs``: any S3-compatible object store (AWS S3, MinIO, R2, Ceph) through boto3, with
  endpoint, credentials and region from settings or the standard ``AWS_*`` variables.

Keys are ``/``-separated names of safe characters: ``jobs/<job id>/<name>`` for a job's
artifacts and moved inputs (deleted together with the job), ``uploads/<id>`` for uploads,
``models/<id>/`` for the weights of fine-tuned models.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.settings import Settings

KEPT_PREFIX = "models/"  # blobs that outlive retention (fine-tuned weights)
CHUNK = 256 * 1024
PART = 5 * 1024 * 1024  # S3's smallest multipart part
_SEGMENT = re.compile(r"^[A-Za-z0-9._~-]{1,200}$")


class BlobError(RuntimeError):
    """The blob store does not answer or refuses a write."""


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    content_type: str
    sha256: str
    meta: dict[str, str] = field(default_factory=dict)
    modified: float = 0.0  # seconds since the epoch

    def link(self) -> dict[str, Any]:
        """What a record keeps of a blob."""
        return {"bytes": self.size, "content_type": self.content_type, "sha256": self.sha256}


def check_key(key: str) -> str:
    """Refuse keys that could leave the store's root (``..``, empty or odd segments)."""
    parts = key.split("/")
    if not parts or any(not _SEGMENT.match(p) or p in (".", "..") for p in parts):
        raise ValueError(f"not a blob key: {key!r}")
    return key


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def artifact_key(job_id: str, name: str) -> str:
    return check_key(f"jobs/{job_id}/{name}")


def upload_key(upload_id: str) -> str:
    return check_key(f"uploads/{upload_id}")


def _digest(source: bytes | IO[bytes]) -> tuple[str, int]:
    """(sha256 hex, size) of bytes or of a seekable file from its start (left at 0)."""
    if isinstance(source, bytes | bytearray | memoryview):
        return hashlib.sha256(source).hexdigest(), len(source)
    h, size = hashlib.sha256(), 0
    source.seek(0)
    while chunk := source.read(CHUNK):
        h.update(chunk)
        size += len(chunk)
    source.seek(0)
    return h.hexdigest(), size


class BlobStore(ABC):
    """Named blobs with a content type, a checksum and a few string fields of metadata."""

    @abstractmethod
    def put(self, key: str, source: bytes | IO[bytes], content_type: str,
            meta: dict[str, str] | None = None) -> BlobInfo:
        """Store bytes, or a seekable file read in chunks (never whole in memory)."""

    @abstractmethod
    def head(self, key: str) -> BlobInfo | None: ...

    @abstractmethod
    def chunks(self, key: str) -> Iterator[bytes] | None:
        """The blob's bytes in chunks, or None if there is no such blob."""

    def read(self, key: str) -> bytes | None:
        parts = self.chunks(key)
        return None if parts is None else b"".join(parts)

    @abstractmethod
    def entries(self, prefix: str = "") -> list[BlobInfo]:
        """Every blob under ``prefix`` (size and time of last change only; no metadata)."""

    @abstractmethod
    def delete(self, keys: list[str]) -> int: ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every blob under ``prefix``; return how many."""
        return self.delete([b.key for b in self.entries(prefix)])

    def sweep(self, older_than_s: float) -> int:
        """Delete the blobs written more than ``older_than_s`` ago (retention); how many.
        Fine-tuned models' weights (``models/``) stay until their model is deleted."""
        cutoff = time.time() - older_than_s
        return self.delete([b.key for b in self.entries() if b.modified < cutoff
                            and not b.key.startswith(KEPT_PREFIX)])

    def presign(self, key: str, expiry_s: int) -> str | None:
        """A URL that reads the blob for ``expiry_s`` seconds, where the store has them."""
        return None


class FolderBlobs(BlobStore):
    """Blobs as files: ``<root>/data/<key>``, metadata in ``<root>/meta/<key>.json``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        (self.root / "meta").mkdir(parents=True, exist_ok=True)

    def _paths(self, key: str) -> tuple[Path, Path]:
        check_key(key)
        return self.root / "data" / key, self.root / "meta" / f"{key}.json"

    def put(self, key: str, source: bytes | IO[bytes], content_type: str,
            meta: dict[str, str] | None = None) -> BlobInfo:
        data_path, meta_path = self._paths(key)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        sha, size = _digest(source)
        # Written beside, then renamed: a reader sees the old blob or the new, never half.
        fd, tmp = tempfile.mkstemp(dir=data_path.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as out:
            if isinstance(source, bytes | bytearray | memoryview):
                out.write(source)
            else:
                shutil.copyfileobj(source, out, CHUNK)
        info = BlobInfo(key, size, content_type, sha, dict(meta or {}), time.time())
        meta_path.write_text(json.dumps({"content_type": content_type, "sha256": sha,
                                         "size": size, "meta": info.meta}))
        os.replace(tmp, data_path)
        return info

    def head(self, key: str) -> BlobInfo | None:
        data_path, meta_path = self._paths(key)
        try:
            stat = data_path.stat()
            meta = json.loads(meta_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return BlobInfo(key, stat.st_size, meta["content_type"], meta["sha256"],
                        meta.get("meta", {}), stat.st_mtime)

    def chunks(self, key: str) -> Iterator[bytes] | None:
        data_path, _ = self._paths(key)
        try:
            f = data_path.open("rb")
        except FileNotFoundError:
            return None

        def read() -> Iterator[bytes]:
            with f:
                while chunk := f.read(CHUNK):
                    yield chunk

        return read()

    def entries(self, prefix: str = "") -> list[BlobInfo]:
        base = self.root / "data"
        out = []
        for path in base.rglob("*"):
            if not path.is_file() or path.name.startswith(".part-"):
                continue
            key = path.relative_to(base).as_posix()
            if key.startswith(prefix):
                stat = path.stat()
                out.append(BlobInfo(key, stat.st_size, "", "", {}, stat.st_mtime))
        return out

    def delete(self, keys: list[str]) -> int:
        gone = 0
        for key in keys:
            data_path, meta_path = self._paths(key)
            meta_path.unlink(missing_ok=True)
            try:
                data_path.unlink()
                gone += 1
            except FileNotFoundError:
                pass
            for parent in (data_path.parent, meta_path.parent):  # drop emptied job folders
                if parent not in (self.root / "data", self.root / "meta"):
                    try:
                        parent.rmdir()
                    except OSError:
                        pass
        return gone


class S3Blobs(BlobStore):
    """Blobs as objects under ``s3://bucket/prefix``; metadata as the object's own
    (``x-amz-meta-*``), so nothing else needs to be kept in step."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, access_key_id: str | None = None,
                 secret_access_key: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        # None leaves each to boto3's own lookup: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
        # AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, ~/.aws, instance roles.
        self.s3 = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region,
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
            config=Config(retries={"max_attempts": 3, "mode": "standard"},
                          s3={"addressing_style": "path"} if endpoint_url else None))

    @property
    def _transfer(self) -> Any:
        """Multipart parts of S3's smallest size, one at a time: memory holds one part."""
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=PART, multipart_chunksize=PART,
                              max_concurrency=1, use_threads=False)

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _call(self, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise BlobError(f"s3: {e}") from e
        except BotoCoreError as e:
            raise BlobError(f"s3: {e}") from e

    def put(self, key: str, source: bytes | IO[bytes], content_type: str,
            meta: dict[str, str] | None = None) -> BlobInfo:
        sha, size = _digest(source)
        fields = {**(meta or {}), "sha256": sha}
        if isinstance(source, bytes | bytearray | memoryview):
            self._call(self.s3.put_object, Key=self._name(key), Body=bytes(source),
                       ContentType=content_type, Metadata=fields)
        else:  # multipart for large files, read in chunks
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                self.s3.upload_fileobj(source, self.bucket, self._name(key), ExtraArgs={
                    "ContentType": content_type, "Metadata": fields}, Config=self._transfer)
            except (BotoCoreError, ClientError) as e:
                raise BlobError(f"s3: {e}") from e
        return BlobInfo(key, size, content_type, sha, dict(meta or {}), time.time())

    def head(self, key: str) -> BlobInfo | None:
        got = self._call(self.s3.head_object, Key=self._name(key))
        if got is None:
            return None
        fields = dict(got.get("Metadata") or {})
        sha = fields.pop("sha256", "")
        return BlobInfo(key, int(got["ContentLength"]), got.get("ContentType", ""), sha,
                        fields, got["LastModified"].timestamp())

    def chunks(self, key: str) -> Iterator[bytes] | None:
        got = self._call(self.s3.get_object, Key=self._name(key))
        if got is None:
            return None
        body = got["Body"]

        def read() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(CHUNK)
            finally:
                body.close()

        return read()

    def entries(self, prefix: str = "") -> list[BlobInfo]:
        from botocore.exceptions import BotoCoreError, ClientError

        out = []
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    out.append(BlobInfo(obj["Key"][len(self.prefix):], int(obj["Size"]), "",
                                        "", {}, obj["LastModified"].timestamp()))
        except (BotoCoreError, ClientError) as e:
            raise BlobError(f"s3: {e}") from e
        return out

    def delete(self, keys: list[str]) -> int:
        for i in range(0, len(keys), 1000):  # S3's bound per request
            batch = [{"Key": self._name(k)} for k in keys[i:i + 1000]]
            self._call(self.s3.delete_objects, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def presign(self, key: str, expiry_s: int) -> str | None:
        url: str = self.s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._name(key)},
            ExpiresIn=expiry_s)
        return url


def open_blobs(settings: Settings) -> BlobStore:
    """The blob store ``CONVOY_BLOBS`` names: ``s3://bucket/prefix``, a folder, or (unset)
    the folder ``blobs`` under the data dir."""
    where = settings.blobs
    if where and where.startswith("s3://"):
        bucket, _, prefix = where[len("s3://"):].partition("/")
        if not bucket:
            raise ValueError(f"CONVOY_BLOBS names no bucket: {where!r}")
        return S3Blobs(bucket, prefix, endpoint_url=settings.s3_endpoint_url,
                       region=settings.s3_region, access_key_id=settings.s3_access_key_id,
                       secret_access_key=settings.s3_secret_access_key)
    return FolderBlobs(Path(where) if where else settings.data_dir / "blobs")
