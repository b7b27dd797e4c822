"""ControlNet on the tiny Stable Diffusion pipeline, with a tiny ControlNet made from its
UNet: a variant over the same modules, steered by the control image, batched by what the
call shares, cancelable between steps."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from models.catalog import ModelEntry
from models.kinds.generate import GenerateArgs
from models.pipelines import PipelinePredictor
from models.predictor import InvalidRequest, Request
from tests.models.tiny_pipeline import save_tiny_controlnet, save_tiny_text_pipeline


def edges(seed: int, side: int = 16) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(((rng.random((side, side)) > 0.7) * 255).astype(np.uint8))


def generate(seeds: list[int], **extra: object) -> Request[GenerateArgs]:
    inp = {"prompt": "a red cat", "steps": 4, "scheduler": "ddim", **extra}
    return Request("generate", GenerateArgs(seeds=seeds, **inp))


def pixels(out) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.stack([np.asarray(Image.open(io.BytesIO(a.data)).convert("RGB"), np.float32) / 255
                     for a in out["images"]])


@pytest.fixture(scope="module")
def entries(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelEntry, ModelEntry]:
    folder = tmp_path_factory.mktemp("sd-control")
    pipe = save_tiny_text_pipeline(folder / "pipe")
    controlnet = save_tiny_controlnet(pipe, folder / "controlnet", seed=3)
    return (ModelEntry(name="plain", family="diffusers", kinds=["generate"], path=pipe),
            ModelEntry(name="ctl", family="diffusers", kinds=["generate"], path=pipe,
                       controlnet_path=controlnet))


@pytest.fixture(scope="module")
def ctl(entries: tuple[ModelEntry, ModelEntry]) -> PipelinePredictor:
    p = PipelinePredictor(entries[1])
    p.load()
    return p


def test_the_controlnet_variant_shares_the_loaded_modules(
        ctl: PipelinePredictor, entries: tuple[ModelEntry, ModelEntry]) -> None:
    ctl.predict([generate([1], control_image=edges(1))])
    built = ctl.variants["control"]
    assert built.unet is ctl.pipe.unet and built.vae is ctl.pipe.vae
    assert built.text_encoder is ctl.pipe.text_encoder and built.controlnet is ctl.controlnet
    plain = PipelinePredictor(entries[0])
    plain.load()
    own = sum(p.numel() * p.element_size() for p in ctl.controlnet.parameters())
    assert ctl.memory_bytes() >= plain.memory_bytes() + own  # the ControlNet, once


def test_the_control_image_steers_and_seeds_repeat(ctl: PipelinePredictor) -> None:
    base = pixels(ctl.predict([generate([5, 6])])[0])
    one = pixels(ctl.predict([generate([5, 6], control_image=edges(1))])[0])
    again = pixels(ctl.predict([generate([5, 6], control_image=edges(1))])[0])
    off = pixels(ctl.predict([generate([5, 6], control_image=edges(1), control_scale=0.0)])[0])
    assert np.abs(one - base).mean() > 0.01
    assert np.abs(one - again).max() <= 1 / 255
    assert np.abs(off - base).max() <= 2 / 255


def test_batches_share_scale_and_size_and_a_cancel_stops_the_call(ctl: PipelinePredictor) -> None:
    key = ctl.batch_key
    same = key(generate([1], control_image=edges(1))), key(generate([2], control_image=edges(2)))
    assert same[0] == same[1]
    assert key(generate([1], control_image=edges(1))) != key(generate([1]))
    assert key(generate([1], control_image=edges(1), control_scale=0.5)) != same[0]
    assert key(generate([1], control_image=edges(1, 32))) != same[0]
    calls: list[int] = []

    def cancel_at_two(step: int, total: int, previews=None) -> list[bool]:  # type: ignore[no-untyped-def]
        calls.append(step)
        return [step < 2]

    assert ctl.predict([generate([1], control_image=edges(1), steps=8)], cancel_at_two) == [None]
    assert calls == [1, 2]


def test_a_model_without_a_controlnet_refuses_a_control_image(
        entries: tuple[ModelEntry, ModelEntry]) -> None:
    assert entries[0].cannot("controlnet") and entries[1].cannot("controlnet") is None
    plain = PipelinePredictor(entries[0])
    plain.load()
    with pytest.raises(InvalidRequest, match="no ControlNet"):
        plain.predict([generate([1], control_image=edges(1))])
