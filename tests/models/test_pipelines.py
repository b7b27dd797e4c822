"""Any diffusers pipeline folder: a tiny text-to-image pipeline and a tiny DDPM pipeline,
built here from configs and saved with safetensors, served through the predictor."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.catalog import ModelEntry
from models.kinds.generate import GenerateArgs
from models.pipelines import PipelinePredictor
from models.predictor import InvalidRequest, Request
from tests.models.tiny_pipeline import (
    build_tiny_text_pipeline,
    save_tiny_class_pipeline,
    save_tiny_text_pipeline,
    save_tiny_unet_pipeline,
)


def entry(path: Path) -> ModelEntry:
    return ModelEntry(name="tiny", family="diffusers", kinds=["generate"], path=path)


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> PipelinePredictor:
    p = PipelinePredictor(entry(save_tiny_text_pipeline(tmp_path_factory.mktemp("sd") / "pipe")))
    p.load()
    return p


@pytest.fixture(scope="module")
def pixel(tmp_path_factory: pytest.TempPathFactory) -> PipelinePredictor:
    p = PipelinePredictor(entry(save_tiny_unet_pipeline(tmp_path_factory.mktemp("ddpm") / "pipe")))
    p.load()
    return p


def generate(n: int = 1, seeds: list[int] | None = None, **extra: object) -> Request:
    inp = {
        "seeds": seeds or list(range(n)),
        "class_index": None,
        "prompt": "a red cat",
        "negative_prompt": None,
        "steps": 3,
        "scheduler": "dpmpp",
        "guidance_scale": 4.0,
        "height": None,
        "width": None,
        "preview_every": 0,
        **extra,
    }
    return Request("generate", GenerateArgs(**inp))


class Recorder:
    def __init__(self, cancel_at: int | None = None, cancel: tuple[int, ...] = ()) -> None:
        self.calls: list[tuple[int, int, list]] = []
        self.cancel_at, self.cancel = cancel_at, cancel

    def __call__(self, step, total, previews=None):  # type: ignore[no-untyped-def]
        previews = list(previews or [])
        self.calls.append((step, total, previews))
        return [not (step == self.cancel_at and i in self.cancel) for i in range(len(previews))]


def test_prompt_gives_images_with_seeds_and_previews_come_first(text: PipelinePredictor) -> None:
    assert text.mode == "callback"
    rec = Recorder()
    out = text.predict([generate(2, [5, 6], preview_every=2, steps=4)], rec)[0]
    assert out is not None
    assert [(a.name, a.meta["seed"], a.meta["width"]) for a in out["images"]] == [
        ("image-0.png", 5, 16),
        ("image-1.png", 6, 16),
    ]
    assert [s for s, _, _ in rec.calls] == [1, 2, 3, 4] and rec.calls[0][1] == 4
    names = [[p.name if p else None for p in previews] for _, _, previews in rec.calls]
    assert names == [[None], ["preview-2.png"], [None], ["preview-4.png"]]
    preview = Image.open(io.BytesIO(rec.calls[1][2][0].data))
    assert preview.size[0] > 16 and preview.mode == "RGB"  # both images, decoded by the VAE


def test_the_last_preview_of_each_scheduler_is_close_to_the_image(text: PipelinePredictor) -> None:
    for scheduler in ("dpmpp", "ddim", "euler"):  # clean-sample estimate, or latents at unit scale
        rec = Recorder()
        out = text.predict([generate(1, [3], scheduler=scheduler, steps=4, preview_every=4)], rec)[0]
        image = np.asarray(Image.open(io.BytesIO(out["images"][0].data)), np.float32)  # type: ignore[index]
        preview = np.asarray(Image.open(io.BytesIO(rec.calls[-1][2][0].data)), np.float32)
        assert np.abs(preview - image).mean() < 4, scheduler  # of 255


def test_same_seed_same_png_bytes_and_prompts_matter(text: PipelinePredictor) -> None:
    a = text.predict([generate(1, [9], scheduler="ddpm")])[0]
    b = text.predict([generate(1, [9], scheduler="ddpm")])[0]
    c = text.predict([generate(1, [10], scheduler="ddpm")])[0]
    d = text.predict([generate(1, [9], scheduler="ddpm", prompt="a dog", negative_prompt="red")])[0]
    assert a["images"][0].data == b["images"][0].data  # type: ignore[index]
    assert a["images"][0].data != c["images"][0].data  # type: ignore[index]
    assert a["images"][0].data != d["images"][0].data  # type: ignore[index]


def test_each_scheduler_and_size(text: PipelinePredictor) -> None:
    for scheduler in ("ddpm", "ddim", "dpmpp", "euler"):
        out = text.predict([generate(1, [1], scheduler=scheduler, steps=2, height=24, width=32)])[0]
        assert (out["images"][0].meta["width"], out["images"][0].meta["height"]) == (32, 24)  # type: ignore[index]
    assert type(text.pipe.scheduler).__name__ == "DDIMScheduler"  # the loaded pipeline is untouched


def test_canceling_the_only_member_interrupts_within_a_step(text: PipelinePredictor) -> None:
    rec = Recorder(cancel_at=2, cancel=(0,))
    assert text.predict([generate(1, steps=8)], rec) == [None]
    assert [s for s, _, _ in rec.calls] == [1, 2]


def test_a_canceled_member_is_dropped_and_the_rest_finishes(text: PipelinePredictor) -> None:
    rec = Recorder(cancel_at=1, cancel=(0,))
    out = text.predict([generate(1, [1], steps=3), generate(2, [2, 3], steps=3)], rec)
    assert out[0] is None and out[1] is not None
    assert [len(p) for _, _, p in rec.calls] == [2, 1, 1]
    assert [a.meta["seed"] for a in out[1]["images"]] == [2, 3]


def test_text_pipeline_needs_a_prompt(text: PipelinePredictor) -> None:
    with pytest.raises(InvalidRequest, match="prompt is required"):
        text.predict([generate(prompt=None)])


def test_pixel_unet_pipeline_runs_our_loop_with_any_scheduler(pixel: PipelinePredictor) -> None:
    assert pixel.mode == "unet2d"
    rec = Recorder(cancel_at=1, cancel=(1,))
    reqs = [
        generate(1, [4], prompt=None, scheduler="euler", steps=3, preview_every=1),
        generate(1, [5], prompt=None, scheduler="euler", steps=3),
    ]
    out = pixel.predict(reqs, rec)
    assert out[1] is None and out[0] is not None
    assert [len(p) for _, _, p in rec.calls] == [2, 1, 1]
    assert rec.calls[0][2][0].name == "preview-1.png"
    again = pixel.predict([generate(1, [4], prompt=None, scheduler="euler", steps=3)])[0]
    a, b = (
        np.asarray(Image.open(io.BytesIO(r["images"][0].data)), dtype=np.int16)
        for r in (out[0], again)
    )  # type: ignore[index]
    assert a.shape == (16, 16) and np.abs(a - b).max() <= 1
    with pytest.raises(InvalidRequest, match="takes no prompt"):
        pixel.predict([generate()])


def test_class_pipeline_without_callback_reports_from_its_scheduler(tmp_path: Path) -> None:
    dit = PipelinePredictor(entry(save_tiny_class_pipeline(tmp_path / "dit")))
    dit.load()
    assert dit.mode == "tap"
    req = generate(
        2, [3, 4], prompt=None, class_index=7, scheduler="ddpm", steps=3, preview_every=3
    )
    rec = Recorder()
    first = dit.predict([req], rec)[0]
    assert [s for s, _, _ in rec.calls] == [1, 2, 3]
    assert [p.name if p else None for p in rec.calls[2][2]] == ["preview-3.png"]
    again = dit.predict([req])[0]  # the stochastic scheduler draws from the per-image generators
    assert [a.data for a in first["images"]] == [a.data for a in again["images"]]  # type: ignore[index]
    rec = Recorder(cancel_at=1, cancel=(0,))
    assert dit.predict([generate(1, prompt=None, class_index=1, steps=6)], rec) == [None]
    assert len(rec.calls) == 1
    with pytest.raises(InvalidRequest, match="class is required"):
        dit.predict([generate(prompt=None)])


def test_pickle_only_folder_is_refused(tmp_path: Path) -> None:
    pipe = build_tiny_text_pipeline(tmp_path / "scratch")
    pipe.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    assert list((tmp_path / "pickled" / "unet").glob("*.bin"))
    assert not list((tmp_path / "pickled" / "unet").glob("*.safetensors"))
    with pytest.raises(ValueError, match="only pickle weights"):
        PipelinePredictor(entry(tmp_path / "pickled")).load()


def test_custom_code_and_non_pipelines_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no model_index.json"):
        PipelinePredictor(entry(tmp_path)).load()
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "MyPipeline"}))
    with pytest.raises(ValueError, match="custom code is not run"):
        PipelinePredictor(entry(tmp_path)).load()
    (tmp_path / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "DDPMPipeline",
                "unet": ["my_models", "MyUNet"],
                "scheduler": ["diffusers", "DDPMScheduler"],
            }
        )
    )
    with pytest.raises(ValueError, match="only diffusers and transformers"):
        PipelinePredictor(entry(tmp_path)).load()
