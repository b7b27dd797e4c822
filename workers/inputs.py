"""Input images by reference: uploads, and inline images moved to the blob store.

A job's input may name an upload (``{"upload": "<id>"}``) instead of carrying base64, and
a base64 image above ``CONVOY_INLINE_IMAGE_BYTES`` is moved to the blob store when the job
is accepted (``{"blob": "jobs/<id>/inputs/image", "bytes": n}``): the job record stays a
few hundred bytes whatever the image. The worker reads the bytes back just before the
predictor needs them.
"""

from __future__ import annotations

import base64
from typing import Any

from models.kinds.common import IMAGE_LISTS
from workers.blobs import BlobStore, check_key, upload_key
from workers.errors import InvalidInput, NotFound


def _image_slots(data: dict[str, Any], fields: tuple[str, ...]
                 ) -> list[tuple[str, int | None, Any]]:
    """(field, index in a list or None, value) of every image in an input."""
    slots: list[tuple[str, int | None, Any]] = [
        (name, None, data[name]) for name in fields if data.get(name) is not None]
    for name in IMAGE_LISTS:
        slots += [(name, i, v) for i, v in enumerate(data.get(name) or [])]
    return slots


def _put(data: dict[str, Any], name: str, index: int | None, value: Any) -> None:
    if index is None:
        data[name] = value
    else:
        data[name] = [*data[name][:index], value, *data[name][index + 1:]]


def owned_upload(blobs: BlobStore, upload_id: str, owner: str) -> dict[str, Any]:
    """The upload's description, or NotFound (also for another owner's upload)."""
    try:
        info = blobs.head(upload_key(upload_id))
    except ValueError:
        info = None
    if info is None or info.meta.get("owner") != owner:
        raise NotFound(f"no upload {upload_id!r}")
    return {"id": upload_id, "bytes": info.size, "content_type": info.content_type,
            "sha256": info.sha256, "width": int(info.meta.get("width", 0)),
            "height": int(info.meta.get("height", 0)), "created_at": info.meta.get("created_at")}


def upload_sizes(data: dict[str, Any], fields: tuple[str, ...], owner: str,
                 blobs: BlobStore) -> dict[str, tuple[int, int]]:
    """(width, height) of each image field that names one of the owner's uploads."""
    sizes = {}
    for name, index, value in _image_slots(data, fields):
        if index is None and isinstance(value, dict) and "upload" in value:
            try:
                upload = owned_upload(blobs, value["upload"], owner)
            except NotFound as e:
                raise InvalidInput(f"{name}: {e.message}") from None
            sizes[name] = (upload["width"], upload["height"])
    return sizes


def stash_inputs(data: dict[str, Any], fields: tuple[str, ...], job_id: str, owner: str,
                 blobs: BlobStore, inline_bytes: int, max_pixels: int | None = None
                 ) -> dict[str, Any]:
    """The input to record: uploads checked to be the owner's (and within ``max_pixels``,
    the model's bound), base64 images longer than ``inline_bytes`` moved to the blob store
    (they were checked already)."""
    out = dict(data)
    for name, index, value in _image_slots(data, fields):
        where = name if index is None else f"{name}[{index}]"
        if isinstance(value, dict) and "upload" in value:
            try:
                upload = owned_upload(blobs, value["upload"], owner)
            except NotFound as e:
                raise InvalidInput(f"{where}: {e.message}") from None
            pixels = upload["width"] * upload["height"]
            if max_pixels is not None and pixels > max_pixels:
                raise InvalidInput(f"{where} is {upload['width']}x{upload['height']} = {pixels} "
                                   f"pixels, over this model's limit of {max_pixels}")
        elif isinstance(value, str) and len(value) > inline_bytes:
            key = check_key(f"jobs/{job_id}/inputs/{name}" + ("" if index is None else f"-{index}"))
            info = blobs.put(key, value.encode(), "text/plain; charset=us-ascii")
            _put(out, name, index, {"blob": key, "bytes": info.size})
    return out


def load_inputs(data: dict[str, Any], fields: tuple[str, ...], blobs: BlobStore
                ) -> dict[str, Any]:
    """The input with every referenced image back as base64 (what ``prepare`` decodes)."""
    out = dict(data)
    for name, index, value in _image_slots(data, fields):
        if not isinstance(value, dict):
            continue
        if "upload" in value:
            raw = blobs.read(upload_key(value["upload"]))
            text = None if raw is None else base64.b64encode(raw).decode()
        else:
            raw = blobs.read(value["blob"])
            text = None if raw is None else raw.decode()
        if text is None:
            raise InvalidInput(f"{name}: the image is gone (its upload expired or was deleted)")
        _put(out, name, index, text)
    return out
