"""Class-conditional diffusion: builder, sampling loop and the ``generate`` predictor,
on a tiny UNet2DModel (16x16, widths (8, 16), 2 steps)."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from models.catalog import ModelEntry
from models.checkpoint import config_dict, save_checkpoint
from models.diffusion import (
    SCHEDULERS,
    DiffusionConfig,
    DiffusionPredictor,
    NoiseSchedule,
    build_unet,
    clip_through_x0,
    make_scheduler,
    per_image_noise,
    sample_loop,
)
from models.kinds.classify import ClassifyArgs
from models.kinds.generate import GenerateArgs
from models.predictor import InvalidRequest, Request
from models.registry import get_model

TINY = DiffusionConfig(
    sample_size=16,
    channels=1,
    num_classes=3,
    block_out_channels=(8, 16),
    norm_num_groups=4,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=4,
)
SCHEDULE = NoiseSchedule(num_train_timesteps=50)
WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "weights"


def pixels(artifact) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.asarray(Image.open(io.BytesIO(artifact.data)), dtype=np.int16)


def tiny_predictor(folder: Path, scale: float) -> DiffusionPredictor:
    """The tiny class-conditional predictor, its random weights multiplied by ``scale``."""
    torch.manual_seed(0)
    unet = build_unet(TINY)
    with torch.no_grad():
        for p in unet.parameters():
            p.mul_(scale)
    weights = folder / "tiny-ddpm.safetensors"
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
        name="tiny-ddpm", family="ddpm", kinds=["generate"], weights=weights, labels=["a", "b", "c"]
    )
    p = DiffusionPredictor(entry)
    p.load()
    return p


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> DiffusionPredictor:
    """Random weights ×3, so that the class shows. The net is chaotic then: a change in the
    last bits of its input (another batch composition, another CPU) moves DPM-Solver++
    samples by whole grey levels; compare its outputs only within one batch composition."""
    return tiny_predictor(tmp_path_factory.mktemp("ddpm"), 3.0)


@pytest.fixture(scope="module")
def calm(tmp_path_factory: pytest.TempPathFactory) -> DiffusionPredictor:
    """Random weights as initialised: a net on which a last-bit change stays a last-bit
    change, for comparing outputs across batch compositions."""
    return tiny_predictor(tmp_path_factory.mktemp("ddpm-calm"), 1.0)


def image_tensor(artifact) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """A PNG artifact as a float tensor in [0, 1]."""
    return torch.from_numpy(pixels(artifact).astype(np.float32) / 255.0)


def generate(n: int = 1, seeds: list[int] | None = None, **extra: object) -> Request:
    inp = {
        "seeds": seeds or list(range(n)),
        "class_index": 0,
        "prompt": None,
        "negative_prompt": None,
        "steps": 2,
        "scheduler": "ddpm",
        "guidance_scale": 3.0,
        "height": None,
        "width": None,
        "preview_every": 0,
        **extra,
    }
    return Request("generate", GenerateArgs(**inp))


class Recorder:
    """An on_step that records its calls and cancels chosen members at a chosen step."""

    def __init__(self, cancel_at: int | None = None, cancel: tuple[int, ...] = ()) -> None:
        self.calls: list[tuple[int, int, list]] = []
        self.cancel_at, self.cancel = cancel_at, cancel

    def __call__(self, step, total, previews=None):  # type: ignore[no-untyped-def]
        previews = list(previews or [])
        self.calls.append((step, total, previews))
        return [not (step == self.cancel_at and i in self.cancel) for i in range(len(previews))]


def test_builder_from_sidecar_json_has_a_null_class() -> None:
    unet = get_model("ddpm", **config_dict(TINY))  # lists, as JSON gives them
    assert unet.config.num_class_embeds == 4
    out = unet(torch.randn(2, 1, 16, 16), 3, class_labels=torch.tensor([0, 3])).sample
    assert out.shape == (2, 1, 16, 16)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"block_out_channels": (8, 16, 32)}, "differ in length"),
        ({"block_out_channels": (6, 16)}, "not divisible by norm_num_groups"),
        ({"down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D")}, "unknown block types"),
        ({"sample_size": 15}, "sample_size"),
    ],
)
def test_builder_refuses_bad_configs(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_unet(DiffusionConfig(**{**config_dict(TINY), **change}))


def test_each_scheduler_is_a_fresh_instance_on_the_training_schedule() -> None:
    a, b = make_scheduler("dpmpp", SCHEDULE), make_scheduler("dpmpp", SCHEDULE)
    assert a is not b and a.config.algorithm_type == "dpmsolver++"
    assert a.config.num_train_timesteps == 50
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler("pndm", SCHEDULE)


class Oracle(torch.nn.Module):
    """The exact noise prediction when the data is one fixed image: every sampler, guided
    or not, must land on that image."""

    def __init__(self, target: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.target, self.abar = target, alphas_cumprod

    def forward(self, x, t, class_labels=None):  # type: ignore[no-untyped-def]
        assert class_labels is not None and len(class_labels) == len(x)
        a = self.abar[round(float(t))]
        return SimpleNamespace(sample=(x - a.sqrt() * self.target) / (1 - a).sqrt())


@pytest.mark.parametrize(
    ("scheduler", "steps"), [("ddpm", 50), ("ddim", 10), ("dpmpp", 5), ("euler", 5)]
)
def test_sampling_loop_lands_on_the_data(scheduler: str, steps: int) -> None:
    target = torch.rand(1, 1, 8, 8) * 2 - 1
    oracle = Oracle(target, make_scheduler("ddpm", SCHEDULE).alphas_cumprod)
    noise, generators = per_image_noise([1, 2], (1, 8, 8))
    out, kept = sample_loop(
        oracle,
        make_scheduler(scheduler, SCHEDULE),
        steps,
        noise,
        generators,
        class_labels=torch.tensor([0, 1]),
        null_class=3,
        guidance_scale=2.0,
    )
    assert kept.tolist() == [0, 1]
    assert (out - target).abs().max() < 1e-3


@pytest.mark.parametrize("scheduler", ["ddpm", "euler"])
def test_clipping_bounds_the_implied_clean_image(scheduler: str) -> None:
    sched = make_scheduler(scheduler, SCHEDULE)
    sched.set_timesteps(5)
    t = sched.timesteps[0]
    latents = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    x_t = sched.scale_model_input(latents * sched.init_noise_sigma, t)
    eps = 3 * torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))  # a wild guess
    abar = sched.alphas_cumprod[int(t)] if scheduler == "ddpm" else 1 / (1 + sched.sigmas[0] ** 2)

    def implied_x0(e: torch.Tensor) -> torch.Tensor:
        return (x_t - (1 - abar).sqrt() * e) / abar.sqrt()

    assert implied_x0(eps).abs().max() > 1.5
    clipped = clip_through_x0(sched, x_t, eps, t, 1.0)
    assert implied_x0(clipped).abs().max() <= 1.0 + 1e-4
    inside = (implied_x0(eps).abs() < 1).flatten()  # where x0 was in range, eps is untouched
    assert torch.allclose(clipped.flatten()[inside], eps.flatten()[inside], atol=1e-4)


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_every_scheduler_generates_reproducibly(
    predictor: DiffusionPredictor, scheduler: str
) -> None:
    first = predictor.predict([generate(2, [7, 8], scheduler=scheduler)])[0]
    again = predictor.predict([generate(2, [7, 8], scheduler=scheduler)])[0]
    assert first is not None and again is not None
    assert [a.meta for a in first["images"]] == [
        {"width": 16, "height": 16, "seed": 7, "class_label": "a"},
        {"width": 16, "height": 16, "seed": 8, "class_label": "a"},
    ]
    assert [a.data for a in first["images"]] == [a.data for a in again["images"]]
    assert first["images"][0].data != first["images"][1].data


def test_guidance_zero_is_the_unconditional_model(predictor: DiffusionPredictor) -> None:
    uncond = predictor.predict([generate(1, [3], class_index=None)])[0]
    g0 = predictor.predict([generate(1, [3], class_index=2, guidance_scale=0.0)])[0]
    g3 = predictor.predict([generate(1, [3], class_index=2, guidance_scale=3.0)])[0]
    a, b, c = (pixels(r["images"][0]) for r in (uncond, g0, g3))  # type: ignore[index]
    assert np.abs(a - b).max() <= 1
    assert np.abs(a - c).max() > 3


def test_previews_follow_preview_every_per_request(predictor: DiffusionPredictor) -> None:
    rec = Recorder()
    out = predictor.predict(
        [generate(2, [1, 2], steps=4, preview_every=2), generate(1, [3], steps=4)], rec
    )
    assert [(s, t) for s, t, _ in rec.calls] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    shown = [[p.name if p else None for p in previews] for _, _, previews in rec.calls]
    assert shown == [[None, None], ["preview-2.png", None], [None, None], ["preview-4.png", None]]
    assert Image.open(io.BytesIO(rec.calls[1][2][0].data)).size[0] > 16  # a grid of both images
    assert all(r is not None for r in out)


def test_a_canceled_member_leaves_at_once_and_others_are_unchanged(
    calm: DiffusionPredictor,
) -> None:
    # DPM-Solver++ keeps per-image history, which must be cut with the batch
    def reqs() -> list[Request]:
        return [generate(1, [11], scheduler="dpmpp", steps=4),
                generate(2, [12, 13], scheduler="dpmpp", steps=4)]

    rec = Recorder(cancel_at=1, cancel=(1,))
    out = calm.predict(reqs(), rec)
    assert out[1] is None and out[0] is not None
    assert [len(p) for _, _, p in rec.calls] == [2, 1, 1, 1]
    uncanceled = calm.predict(reqs())[0]
    alone = calm.predict([generate(1, [11], scheduler="dpmpp", steps=4)])[0]
    other = calm.predict([generate(1, [12], scheduler="dpmpp", steps=4)])[0]
    survivor = image_tensor(out[0]["images"][0])
    # the same as without the cancel, and as alone, up to rounding to a grey level
    for reference in (uncanceled, alone):
        torch.testing.assert_close(survivor, image_tensor(reference["images"][0]),  # type: ignore[index]
                                   atol=2 / 255, rtol=0)
    # a history cut in the wrong place would draw another image (another seed's, here)
    assert (survivor - image_tensor(other["images"][0])).abs().max() > 0.2  # type: ignore[index]


def test_canceling_everyone_stops_the_loop(predictor: DiffusionPredictor) -> None:
    rec = Recorder(cancel_at=2, cancel=(0,))
    assert predictor.predict([generate(1, steps=6)], rec) == [None]
    assert [s for s, _, _ in rec.calls] == [1, 2]


def test_batch_key_separates_incompatible_requests(predictor: DiffusionPredictor) -> None:
    assert predictor.batch_key(generate(seeds=[1])) == predictor.batch_key(
        generate(seeds=[2], class_index=1)
    )
    assert predictor.batch_key(generate()) != predictor.batch_key(generate(steps=3))
    assert predictor.batch_key(generate()) != predictor.batch_key(generate(scheduler="euler"))


def test_refuses_inputs_it_cannot_serve(predictor: DiffusionPredictor) -> None:
    with pytest.raises(InvalidRequest, match="no prompt"):
        predictor.predict([generate(prompt="a cat")])
    with pytest.raises(InvalidRequest, match="16x16"):
        predictor.predict([generate(height=32)])
    with pytest.raises(InvalidRequest, match="class index"):
        predictor.predict([generate(class_index=3)])


@pytest.mark.skipif(
    not (WEIGHTS / "ddpm-digits.safetensors").exists(), reason="ddpm-digits not trained"
)
def test_shipped_ddpm_draws_the_requested_digit() -> None:
    from models.catalog import Catalog
    from models.classification.predictor import ClassifierPredictor

    catalog = Catalog.load()
    gen = DiffusionPredictor(catalog.get("ddpm-digits"))
    gen.load()
    judge = ClassifierPredictor(catalog.get("lenet5-digits"))
    judge.load()
    reqs = [
        generate(
            2,
            [100 + 2 * k, 101 + 2 * k],
            class_index=k,
            scheduler="dpmpp",
            steps=10,
            guidance_scale=2.0,
        )
        for k in range(10)
    ]
    images = [Image.open(io.BytesIO(a.data)) for r in gen.predict(reqs) for a in r["images"]]  # type: ignore[index]
    labels = judge.predict([Request("classify", ClassifyArgs(image=im, top_k=1)) for im in images])
    hits = sum(r["predictions"][0]["index"] == i // 2 for i, r in enumerate(labels))  # type: ignore[index]
    assert hits >= 16, f"only {hits}/20 generated digits were judged the requested class"
