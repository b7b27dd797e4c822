"""Image-to-image, inpainting and LoRA adapters on diffusers pipelines: the tiny Stable
Diffusion pipeline (variants from the same modules, adapters made here) and the tiny
pixel-space DDPM pipeline (our own loop)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.catalog import LoraSpec, ModelEntry
from models.kinds.generate import GenerateArgs
from models.pipelines import PipelinePredictor
from models.predictor import InvalidRequest, Request
from tests.models.tiny_pipeline import (
    save_tiny_lora,
    save_tiny_text_pipeline,
    save_tiny_unet_pipeline,
)


def pixels(artifact) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.asarray(Image.open(io.BytesIO(artifact.data)), dtype=np.float32) / 255


def picture(seed: int, side: int = 16, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (side, side, 3) if mode == "RGB" else (side, side)
    return Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8))


def half_mask(side: int = 16, height: int | None = None) -> Image.Image:
    mask = np.zeros((height or side, side), dtype=np.uint8)
    mask[(height or side) // 2 :] = 255
    return Image.fromarray(mask)


def generate(n: int = 1, seeds: list[int] | None = None, **extra: object) -> Request:
    inp = {
        "seeds": seeds or list(range(n)),
        "class_index": None,
        "prompt": "a red cat",
        "negative_prompt": None,
        "steps": 6,
        "scheduler": "ddim",
        "guidance_scale": 4.0,
        "height": None,
        "width": None,
        "preview_every": 0,
        **extra,
    }
    return Request("generate", GenerateArgs(**inp))


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> PipelinePredictor:
    folder = tmp_path_factory.mktemp("sd-edits")
    pipe = save_tiny_text_pipeline(folder / "pipe")
    loras = {
        "red": LoraSpec(path=save_tiny_lora(pipe, folder / "red.safetensors", seed=1)),
        "blue": LoraSpec(path=save_tiny_lora(pipe, folder / "blue.safetensors", seed=2)),
    }
    entry = ModelEntry(name="tiny", family="diffusers", kinds=["generate"], path=pipe, loras=loras)
    p = PipelinePredictor(entry)
    p.load()
    return p


def test_variants_share_the_loaded_modules(text: PipelinePredictor) -> None:
    text.predict([generate(1, image=picture(0))])
    text.predict([generate(1, image=picture(0), mask=half_mask())])
    for mode in ("image", "inpaint"):
        built = text.variants[mode]
        assert built.unet is text.pipe.unet and built.vae is text.pipe.vae
        assert built.text_encoder is text.pipe.text_encoder


def test_image_to_image_departs_further_with_strength(text: PipelinePredictor) -> None:
    # The random tiny VAE does not reconstruct, so distances are taken from the image as the
    # pipeline sees it: the output of a single step from a lightly noised latent.
    given = picture(3)

    def made(strength: float) -> np.ndarray:
        out = text.predict([generate(3, [4, 5, 6], image=given, strength=strength, steps=10)])[0]
        assert out is not None
        return np.stack([pixels(a) for a in out["images"]])

    reference = made(0.1)
    distances = [float(np.abs(made(s) - reference).mean()) for s in (0.3, 0.6, 1.0)]
    assert distances[0] < distances[1] < distances[2], distances


def test_inpainting_keeps_unmasked_pixels_with_previews(text: PipelinePredictor) -> None:
    given = picture(6)
    source = np.asarray(given, dtype=np.float32) / 255
    calls: list[int] = []

    def on_step(step: int, total: int, previews: list) -> list[bool]:
        calls.append(step)
        return [True] * len(previews)

    request = generate(1, [7], image=given, mask=half_mask(), preview_every=2)
    out = text.predict([request], on_step)[0]
    assert out is not None and calls == list(range(1, 7))
    made = pixels(out["images"][0])
    assert made.shape == (16, 16, 3)
    assert np.abs(made[:8] - source[:8]).max() <= 2 / 255
    assert np.abs(made[8:] - source[8:]).mean() > 0.02


def test_lora_scale_zero_is_the_base_model_and_one_is_not(text: PipelinePredictor) -> None:
    base = text.predict([generate(1, [9])])[0]
    zero = text.predict([generate(1, [9], loras=[{"name": "red", "scale": 0.0}])])[0]
    one = text.predict([generate(1, [9], loras=[{"name": "red", "scale": 1.0}])])[0]
    blue = text.predict([generate(1, [9], loras=[{"name": "blue", "scale": 1.0}])])[0]
    again = text.predict([generate(1, [9])])[0]  # adapters switched off again afterwards
    a, z, o, b, g = (pixels(x["images"][0]) for x in (base, zero, one, blue, again))  # type: ignore[index]
    assert np.abs(a - z).max() < 2 / 255
    assert np.abs(a - g).max() < 2 / 255
    assert np.abs(a - o).mean() > 0.01 and np.abs(o - b).mean() > 0.01


def test_adapter_sets_batch_apart_and_unknown_ones_are_refused(text: PipelinePredictor) -> None:
    keys = {
        text.batch_key(generate(1, loras=x))
        for x in ([], [{"name": "red", "scale": 1.0}], [{"name": "red", "scale": 0.5}],
                  [{"name": "blue", "scale": 1.0}])
    }
    assert len(keys) == 4
    same = [{"name": "red", "scale": 1.0}, {"name": "blue", "scale": 0.5}]
    assert text.batch_key(generate(1, loras=same)) == text.batch_key(generate(1, loras=same[::-1]))
    with pytest.raises(InvalidRequest, match="unknown LoRA"):
        text.predict([generate(1, loras=[{"name": "green", "scale": 1.0}])])
    with pytest.raises(InvalidRequest, match="same size"):
        text.predict([generate(1, image=picture(1), mask=half_mask(16, 8))])


def test_pixel_pipeline_inpaints_with_its_own_loop(tmp_path: Path) -> None:
    folder = save_tiny_unet_pipeline(tmp_path / "ddpm")
    p = PipelinePredictor(ModelEntry(name="px", family="diffusers", kinds=["generate"], path=folder))
    p.load()
    given = picture(2, mode="L")
    source = np.asarray(given, dtype=np.float32) / 255
    base = {"prompt": None, "steps": 5, "scheduler": "ddpm"}
    out = p.predict([generate(1, [3], image=given, mask=half_mask(), **base)])[0]
    assert out is not None
    made = pixels(out["images"][0])
    assert np.abs(made[:8] - source[:8]).max() <= 1 / 255 + 1e-6
    assert np.abs(made[8:] - source[8:]).mean() > 0.02
    weak = p.predict([generate(1, [3], image=given, strength=0.2, **base)])[0]
    strong = p.predict([generate(1, [3], image=given, strength=1.0, **base)])[0]
    d = [np.abs(pixels(x["images"][0]) - source).mean() for x in (weak, strong)]  # type: ignore[index]
    assert d[0] < d[1]
