"""The blob store's contract, on a folder and on S3 (moto's server, started here), and the
pieces around it: artifacts with checksums, the PNG parameters chunk, moved inputs."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from core.blobs import BlobStore, FolderBlobs, S3Blobs, artifact_key, open_blobs
from core.errors import InvalidInput
from core.inputs import load_inputs, stash_inputs
from core.settings import Settings
from models.predictor import Artifact
from tests.support.s3 import S3Server, start_s3
from workers.artifacts import parameters_text, png_with_text, store_artifacts


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    yield from start_s3()


@pytest.fixture(params=["folder", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "folder":
        return FolderBlobs(tmp_path / "blobs")
    s3: S3Server = request.getfixturevalue("s3_server")
    return S3Blobs(s3.bucket, f"t-{time.monotonic_ns()}", endpoint_url=s3.endpoint,
                   region="us-east-1", access_key_id="convoy-test",
                   secret_access_key="convoy-test")


def png(size: int = 16, color: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (color, 0, 255 - color)).save(buf, format="PNG")
    return buf.getvalue()


def noise_png(size: int) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", (size, size), os.urandom(size * size * 3)).save(buf, format="PNG")
    return buf.getvalue()


def test_put_head_read_delete(blobs: BlobStore) -> None:
    data = png()
    info = blobs.put("jobs/j1/image-0.png", data, "image/png", meta={"owner": "ann"})
    assert info.size == len(data) and info.sha256 == hashlib.sha256(data).hexdigest()
    head = blobs.head("jobs/j1/image-0.png")
    assert head is not None
    assert (head.size, head.content_type, head.sha256) == (len(data), "image/png", info.sha256)
    assert head.meta == {"owner": "ann"}
    assert blobs.read("jobs/j1/image-0.png") == data
    assert blobs.head("jobs/j1/nothing.png") is None and blobs.chunks("jobs/j1/x") is None
    blobs.put("jobs/j1/image-1.png", b"x", "image/png")
    blobs.put("jobs/j2/image-0.png", b"y", "image/png")
    assert sorted(b.key for b in blobs.entries("jobs/j1/")) == ["jobs/j1/image-0.png",
                                                            "jobs/j1/image-1.png"]
    assert blobs.delete_prefix("jobs/j1/") == 2
    assert blobs.entries("jobs/j1/") == [] and blobs.read("jobs/j2/image-0.png") == b"y"


def test_a_file_is_stored_in_chunks(blobs: BlobStore, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 40_000)  # 10 MB: S3 takes it as a multipart upload
    with big.open("rb") as f:
        info = blobs.put("uploads/u1", f, "application/octet-stream")
    assert info.size == big.stat().st_size
    parts = list(blobs.chunks("uploads/u1") or [])
    assert len(parts) > 1 and b"".join(parts) == big.read_bytes()
    assert blobs.head("uploads/u1").sha256 == hashlib.sha256(big.read_bytes()).hexdigest()


@pytest.mark.parametrize("key", ["../x", "jobs/../../etc/passwd", "jobs//x", "/abs", "a/./b",
                                 "jobs/a b", ""])
def test_keys_that_could_escape_are_refused(blobs: BlobStore, key: str) -> None:
    with pytest.raises(ValueError):
        blobs.put(key, b"x", "text/plain")


def test_sweep_removes_what_outlived_retention(blobs: BlobStore) -> None:
    blobs.put("jobs/old/a.png", b"a", "image/png")
    time.sleep(1.1)
    blobs.put("jobs/new/a.png", b"b", "image/png")
    assert blobs.sweep(older_than_s=1.0) == 1
    assert [b.key for b in blobs.entries()] == ["jobs/new/a.png"]


def test_presigned_urls(blobs: BlobStore) -> None:
    blobs.put("jobs/j/p.png", b"bytes", "image/png")
    url = blobs.presign("jobs/j/p.png", 60)
    if isinstance(blobs, FolderBlobs):
        assert url is None  # nothing to sign: the API streams the file
        return
    assert url is not None and "Signature" in url and "Expires" in url
    r = httpx.get(url)
    assert r.status_code == 200 and r.content == b"bytes"


def test_open_blobs_reads_the_setting(tmp_path: Path, s3_server: S3Server) -> None:
    assert isinstance(open_blobs(Settings(data_dir=tmp_path)), FolderBlobs)
    s3 = open_blobs(Settings(data_dir=tmp_path, blobs=f"s3://{s3_server.bucket}/some/prefix",
                             s3_endpoint_url=s3_server.endpoint, s3_region="us-east-1",
                             s3_access_key_id="k", s3_secret_access_key="s"))
    assert isinstance(s3, S3Blobs)
    s3.put("jobs/x/a.png", b"a", "image/png")
    assert f"some/prefix/{artifact_key('x', 'a.png')}" in s3_server.names("some/")


def test_artifacts_go_to_blobs_with_checksums_and_parameters(blobs: BlobStore) -> None:
    result = {"images": [Artifact("image-0.png", png(), meta={"width": 16, "height": 16,
                                                               "seed": 7})],
              "mask": Artifact("mask.png", png(color=3))}
    params = {"model": "tiny-sd", "prompt": "a red cat", "negative_prompt": "blurry",
              "steps": 4, "scheduler": "ddim", "guidance_scale": 7.5}
    linked = store_artifacts(blobs, "job1", result, params)
    image = linked["images"][0]
    stored = blobs.read("jobs/job1/image-0.png")
    assert stored is not None
    assert image["url"] == "/v1/jobs/job1/artifacts/image-0.png" and image["seed"] == 7
    assert image["bytes"] == len(stored) and image["sha256"] == hashlib.sha256(stored).hexdigest()
    text = Image.open(io.BytesIO(stored)).text["parameters"]
    assert text.splitlines()[0] == "a red cat"
    assert text.splitlines()[1] == "Negative prompt: blurry"
    for part in ("Steps: 4", "Sampler: ddim", "CFG scale: 7.5", "Seed: 7", "Size: 16x16",
                 "Model: tiny-sd"):
        assert part in text.splitlines()[2]
    # no seed, no parameters: a mask is not a generated image
    assert "parameters" not in Image.open(io.BytesIO(blobs.read("jobs/job1/mask.png"))).text


def test_png_text_chunk_keeps_pixels_and_unicode() -> None:
    data = png(color=200)
    out = png_with_text(data, "parameters", parameters_text({"prompt": "chat rouge é 猫",
                                                             "seed": 1}))
    a, b = Image.open(io.BytesIO(data)), Image.open(io.BytesIO(out))
    assert list(a.getdata()) == list(b.getdata())
    assert b.text["parameters"].startswith("chat rouge é 猫")
    assert png_with_text(b"not a png", "k", "v") == b"not a png"


def test_large_inline_inputs_move_to_blobs_and_come_back(blobs: BlobStore) -> None:
    small, large = base64.b64encode(png(8)).decode(), base64.b64encode(noise_png(32)).decode()
    assert len(small) < 1024 < len(large)
    data = {"image": large, "top_k": 3}
    stashed = stash_inputs(data, ("image",), "job9", "ann", blobs, inline_bytes=1024)
    assert stashed["image"] == {"blob": "jobs/job9/inputs/image", "bytes": len(large)}
    assert load_inputs(stashed, ("image",), blobs) == data
    assert stash_inputs({"image": small}, ("image",), "j", "ann", blobs, 1024) == {"image": small}
    pair = stash_inputs({"interpolate_between": [small, large]}, ("image",), "j2", "ann",
                        blobs, 1024)
    assert pair["interpolate_between"][0] == small
    assert pair["interpolate_between"][1]["blob"] == "jobs/j2/inputs/interpolate_between-1"


def test_uploads_are_named_by_their_owner_only(blobs: BlobStore) -> None:
    raw = png(32)
    blobs.put("uploads/up1", raw, "image/png", meta={"owner": "ann", "width": "32",
                                                     "height": "32"})
    ref = {"image": {"upload": "up1"}}
    assert stash_inputs(ref, ("image",), "j", "ann", blobs, 1024) == ref
    assert load_inputs(ref, ("image",), blobs)["image"] == base64.b64encode(raw).decode()
    with pytest.raises(InvalidInput, match="over this model's limit of 1000"):
        stash_inputs(ref, ("image",), "j", "ann", blobs, 1024, max_pixels=1000)
    for owner, upload in (("bob", "up1"), ("ann", "missing"), ("ann", "../x")):
        with pytest.raises(InvalidInput, match="no upload"):
            stash_inputs({"image": {"upload": upload}}, ("image",), "j", owner, blobs, 1024)
    blobs.delete(["uploads/up1"])
    with pytest.raises(InvalidInput, match="gone"):
        load_inputs(ref, ("image",), blobs)
