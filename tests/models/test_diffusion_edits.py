"""Image-to-image and inpainting with the ``generate`` predictor of ``models.diffusion``, on
a tiny v-prediction UNet that works at 8x8 and serves 16x16 images (as ``ddpm-digits``
works at 8x8 and serves 32x32)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from models.catalog import ModelEntry
from models.checkpoint import config_dict, save_checkpoint
from models.diffusion import DiffusionConfig, DiffusionPredictor, NoiseSchedule, build_unet
from models.editing import known_at
from models.kinds.generate import GenerateArgs
from models.predictor import InvalidRequest, Request

TINY = DiffusionConfig(
    sample_size=8,
    channels=1,
    num_classes=3,
    block_out_channels=(8, 16),
    norm_num_groups=4,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=4,
    output_size=16,
)
SCHEDULE = NoiseSchedule(
    num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"
)


def pixels(artifact) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.asarray(Image.open(io.BytesIO(artifact.data)), dtype=np.float32) / 255


def picture(seed: int, side: int = 16) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (side, side), dtype=np.uint8))


def bottom_half_mask(side: int = 16, height: int | None = None) -> Image.Image:
    mask = np.zeros((height or side, side), dtype=np.uint8)
    mask[(height or side) // 2 :] = 255  # white: repaint
    return Image.fromarray(mask)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> DiffusionPredictor:
    torch.manual_seed(0)
    unet = build_unet(TINY)
    weights = tmp_path_factory.mktemp("ddpm8") / "tiny.safetensors"
    save_checkpoint(
        weights,
        unet,
        {
            "arch": "ddpm",
            "config": config_dict(TINY),
            "noise_schedule": config_dict(SCHEDULE),
            "labels": ["a", "b", "c"],
            "input": {"channels": 1, "height": 16, "width": 16},
        },
    )
    entry = ModelEntry(
        name="tiny8", family="ddpm", kinds=["generate"], weights=weights, labels=["a", "b", "c"]
    )
    p = DiffusionPredictor(entry)
    p.load()
    return p


def generate(n: int = 1, seeds: list[int] | None = None, **extra: object) -> Request:
    inp = {
        "seeds": seeds or list(range(n)),
        "class_index": 1,
        "steps": 10,
        "scheduler": "ddim",
        "guidance_scale": 2.0,
        "preview_every": 0,
        **extra,
    }
    return Request("generate", GenerateArgs(**inp))


def test_samples_are_upsampled_to_the_served_side(predictor: DiffusionPredictor) -> None:
    out = predictor.predict([generate(2, [1, 2], scheduler="dpmpp")])[0]
    assert out is not None
    assert [(a.meta["width"], a.meta["height"]) for a in out["images"]] == [(16, 16), (16, 16)]
    with pytest.raises(InvalidRequest, match="16x16"):
        predictor.predict([generate(1, height=8)])


@pytest.mark.parametrize("scheduler", ["ddim", "dpmpp", "euler"])
def test_image_to_image_departs_further_with_strength(
    predictor: DiffusionPredictor, scheduler: str
) -> None:
    seeds = [3, 4, 5, 6]
    given = [picture(s) for s in seeds]
    source = np.stack([np.asarray(g, dtype=np.float32) / 255 for g in given])
    distances = []
    for strength in (0.1, 0.5, 1.0):
        requests = [
            generate(1, [s], image=g, strength=strength, scheduler=scheduler)
            for s, g in zip(seeds, given, strict=True)
        ]
        outs = [predictor.predict([r])[0] for r in requests]
        made = np.stack([pixels(o["images"][0]) for o in outs if o is not None])
        distances.append(float(np.abs(made - source).mean()))
    assert distances[0] < distances[1] < distances[2], distances


def test_inpainting_keeps_the_known_pixels_and_changes_the_rest(
    predictor: DiffusionPredictor,
) -> None:
    image, mask = picture(7), bottom_half_mask()
    out = predictor.predict([generate(2, [8, 9], image=image, mask=mask, scheduler="dpmpp")])[0]
    assert out is not None
    source = np.asarray(image, dtype=np.float32) / 255
    for artifact in out["images"]:
        made = pixels(artifact)
        assert np.abs(made[:8] - source[:8]).max() <= 1 / 255 + 1e-6  # kept
        assert np.abs(made[8:] - source[8:]).mean() > 0.05  # repainted
    a, b = (pixels(x) for x in out["images"])
    assert np.abs(a[8:] - b[8:]).mean() > 0.01  # each seed its own fill


def test_inpainting_member_canceled_mid_run_leaves_the_others(
    predictor: DiffusionPredictor,
) -> None:
    mask = bottom_half_mask()
    batch = [generate(1, [s], image=picture(s), mask=mask) for s in (10, 11, 12)]
    alone = predictor.predict([batch[2]])[0]

    def cancel_first(step: int, total: int, previews: list) -> list[bool]:
        return [not (step == 3 and i == 0) for i in range(len(previews))]

    outs = predictor.predict(batch, cancel_first)
    assert outs[0] is None and outs[1] is not None and outs[2] is not None
    assert alone is not None
    assert np.abs(pixels(outs[2]["images"][0]) - pixels(alone["images"][0])).max() < 0.02


def test_known_pixels_at_a_coarser_side_are_only_wholly_kept_blocks() -> None:
    repaint = torch.zeros(1, 1, 16, 16)
    repaint[..., 8:, :] = 1
    repaint[..., 5, 5] = 1  # one pixel inside an otherwise kept 2x2 block
    known = known_at(repaint, 8)
    assert known[0, 0, 4:].sum() == 0 and known[0, 0, 2, 2] == 0
    assert known[0, 0, :4].sum() == 4 * 8 - 1


def test_edit_requests_batch_apart_and_bad_masks_are_refused(
    predictor: DiffusionPredictor,
) -> None:
    plain, image = generate(1), generate(1, image=picture(1))
    weaker = generate(1, image=picture(1), strength=0.3)
    inpaint = generate(1, image=picture(1), mask=bottom_half_mask())
    keys = {predictor.batch_key(r) for r in (plain, image, weaker, inpaint)}
    assert len(keys) == 4
    with pytest.raises(InvalidRequest, match="same size"):
        predictor.predict([generate(1, image=picture(1), mask=bottom_half_mask(16, 12))])
    with pytest.raises(InvalidRequest, match="needs the image"):
        predictor.predict([generate(1, mask=bottom_half_mask())])
    with pytest.raises(InvalidRequest, match="runs no step"):
        predictor.predict([generate(1, image=picture(1), strength=0.01)])


@pytest.mark.parametrize("scheduler", ["ddpm", "euler"])
def test_clipping_a_velocity_bounds_the_implied_clean_image(scheduler: str) -> None:
    from models.diffusion import clip_through_x0, make_scheduler

    sched = make_scheduler(scheduler, SCHEDULE)
    sched.set_timesteps(5)
    t = sched.timesteps[1]
    if scheduler == "euler":
        sched._step_index = 1
    latents = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    x_t = sched.scale_model_input(latents * sched.init_noise_sigma, t)
    v = 3 * torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    index = 1 if scheduler == "euler" else int(t)
    abar = (
        1 / (1 + sched.sigmas[index] ** 2) if scheduler == "euler" else sched.alphas_cumprod[index]
    )

    def implied_x0(out: torch.Tensor) -> torch.Tensor:
        return abar.sqrt() * x_t - (1 - abar).sqrt() * out

    assert implied_x0(v).abs().max() > 1.2
    clipped = clip_through_x0(sched, x_t, v, t, 1.0, "v_prediction")
    assert implied_x0(clipped).abs().max() <= 1.0 + 1e-4
    inside = (implied_x0(v).abs() < 1).flatten()
    assert torch.allclose(clipped.flatten()[inside], v.flatten()[inside], atol=1e-4)
