"""A job's artifacts in the blob store: written by the worker, linked from the record.

The record keeps what a client needs to trust and fetch each artifact (name, URL, size,
content type, SHA-256), never its bytes. Generated PNGs also carry the parameters that
made them in a ``parameters`` text chunk, in the form image tools (AUTOMATIC1111's web UI,
ComfyUI's loaders, exiftool) read: the prompt, then ``Steps: 20, Sampler: dpmpp, ...``.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from models.predictor import Artifact
from workers.blobs import BlobStore, artifact_key

if TYPE_CHECKING:
    from models.catalog import ModelEntry
    from workers.job import Job

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PARAMETERS_KEY = "parameters"


def artifact_url(job_id: str, name: str) -> str:
    return f"/v1/jobs/{job_id}/artifacts/{name}"


def store_artifacts(blobs: BlobStore, job_id: str, value: Any,
                    parameters: dict[str, Any] | None = None,
                    charge: Callable[[int], None] | None = None) -> Any:
    """Write every Artifact inside a predictor result to the blob store and swap it for its
    link. With ``parameters``, PNG images that carry a seed get them as a text chunk;
    ``charge(size)`` is called before each write (it may refuse by raising)."""
    if isinstance(value, Artifact):
        data = value.data
        if parameters is not None and value.content_type == "image/png" and "seed" in value.meta:
            text = parameters_text({**parameters, "seed": value.meta["seed"],
                                    "size": _size(value.meta)})
            data = png_with_text(data, PARAMETERS_KEY, text)
        if charge is not None:
            charge(len(data))
        info = blobs.put(artifact_key(job_id, value.name), data, value.content_type)
        return {"name": value.name, "url": artifact_url(job_id, value.name),
                "content_type": value.content_type, "bytes": info.size, "sha256": info.sha256,
                **value.meta}
    if isinstance(value, dict):
        return {k: store_artifacts(blobs, job_id, v, parameters, charge)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [store_artifacts(blobs, job_id, v, parameters, charge) for v in value]
    return value


def _size(meta: dict[str, Any]) -> str | None:
    if "width" in meta and "height" in meta:
        return f"{meta['width']}x{meta['height']}"
    return None


def generation_parameters(job: Job, entry: ModelEntry) -> dict[str, Any] | None:
    """What made a ``generate`` or ``sample`` job's images (None for other kinds)."""
    if job.kind not in ("generate", "sample"):
        return None
    data = job.input
    params: dict[str, Any] = {"model": job.model}
    for name in ("prompt", "negative_prompt", "class_label", "steps", "scheduler"):
        if data.get(name) is not None:
            params[name] = data[name]
    if job.kind == "generate":
        guidance = data.get("guidance_scale")
        params["guidance_scale"] = float(entry.config.get("guidance_scale", 3.0)
                                         if guidance is None else guidance)
    return params


def parameters_text(params: dict[str, Any]) -> str:
    """The text of the ``parameters`` chunk: the prompt, the negative prompt, then one line
    of ``Name: value`` pairs."""
    lines = []
    if params.get("prompt"):
        lines.append(str(params["prompt"]))
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    names = {"steps": "Steps", "scheduler": "Sampler", "guidance_scale": "CFG scale",
             "seed": "Seed", "size": "Size", "model": "Model", "class_label": "Class label"}
    pairs = [f"{label}: {params[key]}" for key, label in names.items()
             if params.get(key) is not None]
    lines.append(", ".join(pairs))
    return "\n".join(lines)


def png_with_text(png: bytes, key: str, text: str) -> bytes:
    """The PNG with an ``iTXt`` chunk (UTF-8 text, uncompressed) after its header; the
    pixels are left as they are. Bytes that are not a PNG are returned unchanged."""
    if not png.startswith(PNG_SIGNATURE) or png[12:16] != b"IHDR":
        return png
    header_end = 8 + 12 + struct.unpack(">I", png[8:12])[0]
    body = key.encode("latin-1") + b"\x00\x00\x00" + b"\x00" + b"\x00" + text.encode()
    chunk = (struct.pack(">I", len(body)) + b"iTXt" + body
             + struct.pack(">I", zlib.crc32(b"iTXt" + body) & 0xFFFFFFFF))
    return png[:header_end] + chunk + png[header_end:]
