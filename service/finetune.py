"""Checks of a ``finetune`` submission that need the service's state: the new model's name
(not a catalog model's, not one the key has already) and the dataset archive's member list
(every refusal names the member), so that a bad archive is a 422 before any queueing."""

from __future__ import annotations

import io

from models.finetune.archive import CONTENT_TYPES, InvalidArchive, inspect
from service.deps import State
from workers.blobs import upload_key
from workers.contract import FinetuneInput, UploadRef
from workers.errors import Conflict, InvalidInput, NotFound
from workers.inputs import owned_upload
from workers.user_models import check_name


def check_finetune(state: State, owner: str, data: FinetuneInput) -> None:
    check_name(data.name, state.catalog)
    if state.user_models.get(owner, data.name) is not None:
        raise Conflict(f"this key has a model named {data.name!r} already; delete it first "
                       f"(DELETE /v1/models/{data.name}) or choose another name")
    if not isinstance(data.dataset, UploadRef):
        return
    try:
        upload = owned_upload(state.blobs, data.dataset.upload, owner)
    except NotFound as e:
        raise InvalidInput(f"dataset: {e.message}") from None
    if upload["content_type"] not in CONTENT_TYPES.values():
        raise InvalidInput(f"dataset: upload {data.dataset.upload!r} is "
                           f"{upload['content_type']}, not a zip or tar archive")
    raw = state.blobs.read(upload_key(data.dataset.upload))
    if raw is None:
        raise InvalidInput(f"dataset: upload {data.dataset.upload!r} is gone")
    try:
        inspect(io.BytesIO(raw))
    except InvalidArchive as e:
        raise InvalidInput(f"dataset: {e}") from None
