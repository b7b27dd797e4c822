"""``/v1/uploads``: images sent once as files and named by jobs afterwards.

A 15 MB image as base64 inside a JSON body costs 20 MB of JSON held whole by the API and,
before the blob store, a 20 MB job record. An upload is a multipart file instead: the
parser spools it to a temporary file (memory holds a chunk at a time), its header is read
for the format and pixel checks that inline images get, and it is copied in chunks to the
blob store. Jobs then send ``{"upload": "<id>"}``; uploads expire with job retention.

A zip or tar (a ``finetune`` job's dataset, one folder per class) is stored as it is: its
members are checked when a job names it (``models/finetune/archive.py``).
"""

from __future__ import annotations

import warnings
from typing import IO, Any

import anyio
from fastapi import APIRouter, Request, Response
from PIL import Image
from starlette.datastructures import UploadFile

from core.blobs import upload_key
from core.errors import InvalidInput, PayloadTooLarge, RateLimited, UnsupportedMediaType
from core.images import ALLOWED_FORMATS
from core.inputs import owned_upload
from core.metering import refund_upload
from core.settings import new_id
from core.store.base import now_iso, usage_buckets
from models.finetune.archive import CONTENT_TYPES, archive_kind
from service.deps import Caller, CallerDep, State, StateDep
from service.errors import V1_ERRORS, error_responses
from service.schemas import Upload

router = APIRouter(prefix="/v1/uploads", tags=["uploads"], responses=V1_ERRORS)
FIELD = "file"
_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "BMP": "image/bmp"}
_FORM = {"multipart/form-data": {"schema": {
    "type": "object", "required": [FIELD],
    "properties": {FIELD: {"type": "string", "format": "binary",
                           "description": "the image (PNG, JPEG, WebP, BMP), or a "
                           "finetune dataset: a zip or tar of one folder per class"}}}}}


def _rate(state: State, caller: Caller) -> None:
    retry = state.limiter.take(caller.key) if state.keys else 0.0
    if retry > 0:
        raise RateLimited("too many requests for this API key", retry_after=retry)


def _header(file: IO[bytes], max_pixels: int) -> tuple[str, int, int]:
    """(format, width, height) from the image's header alone; no pixel is decoded."""
    head = file.read(16)
    file.seek(0)
    if head.startswith((b"%PDF", b"GIF8")) or head[:4] in (b"II*\x00", b"MM\x00*"):
        raise UnsupportedMediaType(f"this format is not accepted; send "
                                   f"{', '.join(sorted(ALLOWED_FORMATS))}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(file)
            fmt, (width, height) = str(image.format), image.size
    except (OSError, ValueError, SyntaxError):  # PIL's ways of saying "not an image"
        raise InvalidInput(f"{FIELD} is not a readable image") from None
    finally:
        file.seek(0)
    if fmt not in ALLOWED_FORMATS:
        raise UnsupportedMediaType(f"{fmt} is not accepted; send "
                                   f"{', '.join(sorted(ALLOWED_FORMATS))}")
    if width * height > max_pixels:
        raise InvalidInput(f"{FIELD} is {width}x{height} = {width * height} pixels, over the "
                           f"limit of {max_pixels}")
    return fmt, width, height


def _check_bound(state: State, owner: str, size: int) -> None:
    """The owner's bound on stored bytes (uploads, inputs, previews, outputs): 413 for a
    file over it alone, 429 while what the owner stores leaves no room for it."""
    bound = state.store.max_owner_bytes
    if not bound:
        return
    if size > bound:
        raise PayloadTooLarge(f"the file alone is over this key's bound of {bound} stored bytes")
    if state.store.stored_bytes(owner) + size > bound:
        raise RateLimited(f"this key stores {bound} bytes of inputs and results already; "
                          "they expire with their jobs",
                          retry_after=float(usage_buckets(state.settings.retention_s)[1]))


def store_upload(state: State, owner: str, file: IO[bytes], upload_id: str | None = None,
                 meta: dict[str, str] | None = None) -> dict[str, Any]:
    """Check a spooled file (an image's format and pixels from its header, or an archive),
    and the owner's bound; count it and copy it to the blob store in chunks: the upload's
    description. ``meta`` joins the blob's metadata (a job's files name their job)."""
    archive = archive_kind(file.read(8), file)
    file.seek(0)
    if archive is not None:
        content_type, width, height = CONTENT_TYPES[archive], 0, 0
    else:
        fmt, width, height = _header(file, state.settings.max_image_pixels)
        content_type = _TYPES[fmt]
    size = file.seek(0, 2)
    file.seek(0)
    _check_bound(state, owner, size)
    state.store.count_owner_bytes(owner, size)
    upload_id = upload_id or new_id()
    state.blobs.put(upload_key(upload_id), file, content_type, meta={
        **(meta or {}), "owner": owner, "width": str(width), "height": str(height),
        "created_at": now_iso()})
    return owned_upload(state.blobs, upload_id, owner)


@router.post("", status_code=201, operation_id="createUpload", response_model=Upload,
             response_description="stored: the upload's id and description",
             openapi_extra={"requestBody": {"required": True, "content": _FORM}},
             responses=error_responses(413, 415, 429))
async def create_upload(request: Request, state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """Upload an image (multipart/form-data, field ``file``) for jobs to name as
    ``{"upload": id}``, or a zip or tar of one folder per class for a ``finetune`` job's
    ``dataset``. Limits as for inline images: the body limit (413), the formats
    (415) and the pixel bound (422); and the key's bound on stored bytes (413 for a file
    over it alone, 429 while the key stores too much)."""
    _rate(state, caller)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UnsupportedMediaType(f"send multipart/form-data with the image as field {FIELD!r}")
    async with request.form(max_files=1, max_fields=0) as form:
        upload = form.get(FIELD)
        if not isinstance(upload, UploadFile):
            raise InvalidInput(f"send the image as the multipart file field {FIELD!r}")
        return await anyio.to_thread.run_sync(store_upload, state, caller.owner, upload.file)


@router.get("/{upload_id}", operation_id="getUpload", response_model=Upload)
def get_upload(upload_id: str, state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """The upload's description (404 for an unknown id and for another owner's upload)."""
    return owned_upload(state.blobs, upload_id, caller.owner)


@router.delete("/{upload_id}", status_code=204, operation_id="deleteUpload",
               response_class=Response)
def delete_upload(upload_id: str, state: StateDep, caller: CallerDep) -> Response:
    """Delete the upload now rather than at the end of retention (its bytes no longer count
    against the key's bound); jobs queued with it fail."""
    owned_upload(state.blobs, upload_id, caller.owner)
    info = state.blobs.head(upload_key(upload_id))
    if state.blobs.delete([upload_key(upload_id)]) and info is not None:
        refund_upload(state.store, caller.owner, info)
    return Response(status_code=204)
