"""Job submissions as ``multipart/form-data``: the request and its image files in one body.

The part ``job`` holds the request exactly as an ``application/json`` submission would; an
image field of its input (or an item of ``interpolate_between``) that reads
``{"file": "NAME"}`` takes the file part ``NAME``. Each file goes the way of
``POST /v1/uploads``: the parser spools it (memory holds a chunk at a time), its header is
checked for format and pixels, it counts against the owner's stored bytes and is copied
in chunks to the blob store, and the job names it as ``{"upload": id}``, which its record
shows. These uploads belong to their job: deleting the job deletes them
(``core.metering.delete_job``), and a submission that is refused leaves none behind.

With a client-chosen ``id``, each file's upload id derives from the owner, the job id,
the part's name and the file's SHA-256, so that sending the same request again is the
idempotent resubmission that the JSON form gets (the same record, nothing stored twice).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import IO, Any

import anyio
from fastapi import Request, Response
from starlette.datastructures import UploadFile

from service.deps import Caller, State
from service.routes.uploads import store_upload
from core.blobs import CHUNK, upload_key
from core.errors import InvalidInput
from core.metering import SENT_WITH, refund_upload
from core.settings import new_id

JOB_PART = "job"
MAX_FILES = 8  # more image fields than any kind has
MAX_JOB_PART = 1024 * 1024  # the request without its images is small


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


def file_refs(data: dict[str, Any]) -> list[str]:
    """The part names that the request's input refers to as ``{"file": NAME}``."""
    values = (data.get("input") or {}).values() if isinstance(data.get("input"), dict) else []
    found: list[str] = []
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and set(item) == {"file"}:
                if not isinstance(item["file"], str):
                    raise InvalidInput('a file reference is {"file": "NAME"}, NAME a part name')
                found.append(item["file"])
    return found


def _with_uploads(data: dict[str, Any], ids: dict[str, str]) -> dict[str, Any]:
    """The request with every ``{"file": NAME}`` replaced by ``{"upload": id}``."""

    def swap(item: Any) -> Any:
        if isinstance(item, dict) and set(item) == {"file"}:
            return {"upload": ids[item["file"]]}
        return item

    data["input"] = {k: [swap(i) for i in v] if isinstance(v, list) else swap(v)
                     for k, v in data["input"].items()}
    return data


def _sha256(file: IO[bytes]) -> str:
    h = hashlib.sha256()
    file.seek(0)
    while chunk := file.read(CHUNK):
        h.update(chunk)
    file.seek(0)
    return h.hexdigest()


def _upload_id(owner: str, job_id: str, part: str, file: IO[bytes]) -> str:
    """The upload id of a file sent with a client-chosen job id (the same file, the same id)."""
    key = "\0".join((owner, job_id, part, _sha256(file)))
    return hashlib.sha256(key.encode()).hexdigest()[:40]


def _store_files(state: State, owner: str, job_id: str, chosen: bool,
                 files: dict[str, UploadFile]) -> tuple[dict[str, str], list[str]]:
    """Store each file as an upload of the job: (part → upload id, the uploads made now;
    a resubmission finds those of its first submission in place)."""
    ids: dict[str, str] = {}
    made: list[str] = []
    try:
        for part, upload in files.items():
            upload_id = _upload_id(owner, job_id, part, upload.file) if chosen else new_id()
            info = state.blobs.head(upload_key(upload_id)) if chosen else None
            if info is None or info.meta.get("owner") != owner:
                store_upload(state, owner, upload.file, upload_id, meta={SENT_WITH: job_id})
                made.append(upload_id)
            ids[part] = upload_id
    except BaseException:
        remove_uploads(state, owner, made)
        raise
    return ids, made


def remove_uploads(state: State, owner: str, upload_ids: list[str]) -> None:
    """Delete uploads made for a submission that was refused, and give their bytes back."""
    for upload_id in upload_ids:
        info = state.blobs.head(upload_key(upload_id))
        if info is not None and state.blobs.delete([info.key]):
            refund_upload(state.store, owner, info)


async def _job_text(part: str | UploadFile | None) -> bytes:
    if part is None:
        raise InvalidInput(f"send the request as the multipart part {JOB_PART!r}")
    if isinstance(part, str):
        return part.encode()
    text = await part.read(MAX_JOB_PART + 1)
    if len(text) > MAX_JOB_PART:
        raise InvalidInput(f"the part {JOB_PART!r} is over {MAX_JOB_PART} bytes; send images "
                           "as file parts")
    return text


async def submit_multipart(request: Request, state: State, caller: Caller,
                           submit_json: Callable[[bytes], Awaitable[Response]]) -> Response:
    """Read a multipart submission, store its files as the job's uploads and submit the
    request naming them through ``submit_json`` (the JSON form's path)."""
    async with request.form(max_files=MAX_FILES + 1, max_fields=1) as form:
        raw = await _job_text(form.get(JOB_PART))
        files: dict[str, UploadFile] = {}
        for name, value in form.multi_items():
            if name == JOB_PART:
                continue
            if not isinstance(value, UploadFile):
                raise InvalidInput(f"part {name!r} is not a file; the only field is {JOB_PART!r}")
            if name in files:
                raise InvalidInput(f"two file parts are named {name!r}")
            files[name] = value
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            if files:
                raise InvalidInput(f"the part {JOB_PART!r} is not a JSON object")
            return await submit_json(raw)  # the JSON form's answer to what it holds
        refs = file_refs(data)
        if missing := sorted(set(refs) - set(files)):
            raise InvalidInput(f"the request names file parts that were not sent: {missing}")
        if unnamed := sorted(set(files) - set(refs)):
            raise InvalidInput(f'file parts that the request does not name as {{"file": ...}}: '
                               f"{unnamed}")
        if not files:
            return await submit_json(raw)
        chosen = isinstance(data.get("id"), str)
        job_id = data["id"] if chosen else new_id()
        ids, made = await anyio.to_thread.run_sync(_store_files, state, caller.owner, job_id,
                                                   chosen, files)
    data["id"] = job_id
    try:
        response = await submit_json(json.dumps(_with_uploads(data, ids)).encode())
    except BaseException:
        await anyio.to_thread.run_sync(remove_uploads, state, caller.owner, made)
        raise
    return response


def with_multipart(openapi: dict[str, Any]) -> dict[str, Any]:
    """The submit route's ``openapi_extra`` with the multipart form beside the JSON one."""
    openapi["requestBody"]["content"]["multipart/form-data"] = {
        "schema": {
            "type": "object", "required": [JOB_PART],
            "properties": {JOB_PART: {
                "type": "object", "additionalProperties": True,
                "description": "the request as the JSON form sends it (application/json), "
                'where an image may also read {"file": "NAME"}: the file part NAME'}},
            "additionalProperties": {"type": "string", "format": "binary",
                                     "description": "an image file (PNG, JPEG, WebP, BMP) "
                                     "that the request names"}},
        "encoding": {JOB_PART: {"contentType": "application/json"}}}
    return openapi
