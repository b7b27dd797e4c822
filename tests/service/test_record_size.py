"""What a Stable-Diffusion-sized job costs Redis: a 512x512 text-to-image job, n=4, a
preview every step, run by a worker runtime on a tiny pipeline (the sizes come from the
images, not the model). Images go to the blob store, so a job costs Redis its record and
events only: a few kilobytes, where it was megabytes.

Also a script, for the figures in docs/operations.md:
``python -m tests.service.test_record_size --jobs 10 --steps 20 [--side 512]`` (Redis from
CONVOY_TEST_REDIS, database 15, flushed).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow
KEYS = ("convoy:job:{}", "convoy:events:{}", "convoy:art:{}")


def save_sd_shaped_pipeline(folder: Path) -> None:
    """The tiny text pipeline with a VAE that scales by 8, as Stable Diffusion's does: 512x512
    images from 64x64 latents, in a second or so a step on a CPU."""
    from diffusers import AutoencoderKL

    from tests.models.tiny_pipeline import build_tiny_text_pipeline

    pipe = build_tiny_text_pipeline(folder.parent / f"{folder.name}-scratch")
    pipe.register_modules(vae=AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 4, 4, 4),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=2, sample_size=64))
    pipe.save_pretrained(folder, safe_serialization=True)


def measure(redis_url: str, tmp: Path, jobs: int, steps: int, side: int = 512
            ) -> dict[str, Any]:
    """Run ``jobs`` jobs; Redis's memory before and after, and the keys of the first job."""
    import redis
    import torch

    from models.catalog import Catalog
    from tests.support.jobs import job, put
    from workers.cache import ModelCache
    from workers.runtime import WorkerRuntime
    from workers.settings import Settings
    from workers.store.redis import RedisStore

    save_sd_shaped_pipeline(tmp / "tiny-sd")
    (tmp / "catalog.toml").write_text(
        '[models.tiny-sd]\nfamily = "diffusers"\nkinds = ["generate"]\npath = "tiny-sd"\n'
        "max_batch = 4\nlimits = { max_side = 512, max_steps = 50 }\n")
    settings = Settings(redis_url=redis_url, data_dir=tmp / "data", catalog=[tmp / "catalog.toml"],
                        batching=False)
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    store = RedisStore(redis_url)
    runtime = WorkerRuntime(settings, store, Catalog.load(settings.catalog),
                            ModelCache(torch.device("cpu")))
    put(store, job("warm", owner="m", kind="generate", model="tiny-sd", request_hash="",
                   input={"prompt": "x", "n": 1, "steps": 1, "seed": 0, "preview_every": 0,
                          "height": 64, "width": 64, "scheduler": "dpmpp",
                          "guidance_scale": None, "negative_prompt": None,
                          "class_label": None}))
    assert runtime.run_job("warm") == "succeeded"
    r.delete(*[k.format("warm") for k in KEYS])
    before = int(r.info("memory")["used_memory"])
    for i in range(jobs):
        put(store, job(
            f"job-{i}", owner="m", kind="generate", model="tiny-sd", request_hash="",
            input={"prompt": "a red circle on a blue square", "negative_prompt": None,
                   "n": 4, "steps": steps, "seed": i, "preview_every": 1, "height": side,
                   "width": side, "scheduler": "dpmpp", "guidance_scale": None,
                   "class_label": None}))
        outcome = runtime.run_job(f"job-{i}")
        assert outcome == "succeeded", outcome
    after = int(r.info("memory")["used_memory"])
    first = {k.format("job-0"): r.memory_usage(k.format("job-0"), samples=0) or 0 for k in KEYS}
    blob_bytes = sum(p.stat().st_size for p in (tmp / "data").rglob("*") if p.is_file()
                     ) if (tmp / "data" / "blobs").exists() else 0
    store.close()
    return {"jobs": jobs, "steps": steps, "side": side, "used_memory_before": before,
            "used_memory_after": after, "per_job": (after - before) / jobs,
            "first_job_keys": first, "first_job_total": sum(first.values()),
            "blob_bytes": blob_bytes}


def test_a_512px_job_costs_redis_kilobytes(redis_url: str, tmp_path: Path) -> None:
    figures = measure(redis_url, tmp_path, jobs=2, steps=3)
    print("FIGURES", figures)
    assert figures["first_job_total"] < 64 * 1024, figures  # megabytes with images inside
    assert figures["per_job"] < 64 * 1024, figures
    assert figures["blob_bytes"] > 2 * 4 * 100_000  # the images went somewhere: the blobs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--side", type=int, default=512, help="image height and width")
    args = parser.parse_args()
    url = os.environ.get("CONVOY_TEST_REDIS", "redis://127.0.0.1:6379") + "/15"
    with tempfile.TemporaryDirectory() as tmp:
        print(measure(url, Path(tmp), args.jobs, args.steps, args.side))
