"""DCGAN: architecture, builder validation, and the ``sample`` predictor on tiny weights."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from models.catalog import ModelEntry
from models.checkpoint import config_dict, save_checkpoint
from models.gan import DCGANConfig, Discriminator, GANPredictor, Generator, latent_for_seed
from models.kinds.classify import ClassifyArgs
from models.kinds.sample import SampleArgs
from models.predictor import InvalidRequest, Request
from models.registry import get_model

TINY = DCGANConfig(latent_dim=8, num_classes=3, embed_dim=4, image_size=16, g_width=8, d_width=8)
WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "weights"


def pixels(artifact) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.asarray(Image.open(io.BytesIO(artifact.data)), dtype=np.int16)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> GANPredictor:
    torch.manual_seed(0)
    g = Generator(TINY)
    # a few training-mode passes give batch norm non-trivial running statistics
    with torch.no_grad():
        for _ in range(3):
            g(torch.randn(16, 8), torch.randint(3, (16,)))
    weights = tmp_path_factory.mktemp("gan") / "tiny-gan.safetensors"
    save_checkpoint(
        weights,
        g,
        {
            "arch": "dcgan",
            "config": config_dict(TINY),
            "labels": ["a", "b", "c"],
            "input": {"channels": 1, "height": 16, "width": 16},
        },
    )
    entry = ModelEntry(
        name="tiny-gan", family="dcgan", kinds=["sample"], weights=weights, labels=["a", "b", "c"]
    )
    p = GANPredictor(entry)
    p.load()
    return p


def sample(n: int = 2, seeds: list[int] | None = None, **extra: object) -> Request:
    inp = {
        "seeds": seeds or list(range(n)),
        "class_index": None,
        "truncation": 1.0,
        "interpolate_between": None,
        "steps": None,
        **extra,
    }
    return Request("sample", SampleArgs(**inp))


def test_shapes_and_range() -> None:
    g, d = Generator(TINY), Discriminator(TINY)
    x = g(torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1]))
    assert x.shape == (5, 1, 16, 16)
    assert x.min() >= -1 and x.max() <= 1
    assert d(x, torch.tensor([0, 1, 2, 0, 1])).shape == (5,)


def test_discriminator_projection_depends_on_label() -> None:
    torch.manual_seed(0)
    d = Discriminator(TINY).eval()
    x = torch.randn(1, 1, 16, 16)
    assert not torch.allclose(d(x, torch.tensor([0])), d(x, torch.tensor([1])))


def test_builder_rebuilds_from_json_config_and_validates() -> None:
    g = get_model("dcgan", **config_dict(TINY))
    assert isinstance(g, Generator) and g.config == TINY
    with pytest.raises(ValueError, match="image_size"):
        Generator(DCGANConfig(image_size=24))
    with pytest.raises(ValueError, match="labels are required"):
        Generator(TINY)(torch.randn(1, 8))


def test_latent_is_per_seed_and_scaled_by_truncation() -> None:
    z1, c1 = latent_for_seed(7, TINY, None, 1.0)
    z2, c2 = latent_for_seed(7, TINY, None, 0.5)
    z3, _ = latent_for_seed(8, TINY, None, 1.0)
    assert torch.allclose(z2, z1 * 0.5)
    assert c1 == c2 and 0 <= c1 < 3  # the missing class comes from the seed
    assert not torch.allclose(z1, z3)
    z4, c4 = latent_for_seed(7, TINY, 2, 1.0)
    assert torch.equal(z4, z1) and c4 == 2  # the class does not change z


def test_same_seed_same_png_and_batching_does_not_matter(predictor: GANPredictor) -> None:
    alone = predictor.predict([sample(1, [42], class_index=1)])[0]
    batched = predictor.predict(
        [sample(3, [1, 2, 3], class_index=0), sample(1, [42], class_index=1)]
    )[1]
    assert alone is not None and batched is not None
    assert alone["images"][0].meta == {"width": 16, "height": 16, "seed": 42, "class_label": "b"}
    assert np.abs(pixels(alone["images"][0]) - pixels(batched["images"][0])).max() <= 1


def test_class_and_truncation_change_the_image(predictor: GANPredictor) -> None:
    out = predictor.predict(
        [
            sample(1, [5], class_index=0),
            sample(1, [5], class_index=2),
            sample(1, [5], class_index=0, truncation=0.3),
        ]
    )
    a, b, c = (pixels(r["images"][0]) for r in out)  # type: ignore[index]
    assert np.abs(a - b).max() > 5
    assert np.abs(a - c).max() > 5


def test_names_seeds_and_random_class(predictor: GANPredictor) -> None:
    out = predictor.predict([sample(3, [10, 11, 12])])[0]
    assert out is not None
    assert [a.name for a in out["images"]] == ["image-0.png", "image-1.png", "image-2.png"]
    assert [a.meta["seed"] for a in out["images"]] == [10, 11, 12]
    expected = [["a", "b", "c"][latent_for_seed(s, TINY, None, 1.0)[1]] for s in (10, 11, 12)]  # type: ignore[index]
    assert [a.meta["class_label"] for a in out["images"]] == expected


def test_refuses_what_it_cannot_do(predictor: GANPredictor) -> None:
    img = Image.new("L", (16, 16))
    with pytest.raises(InvalidRequest, match="encoder"):
        predictor.predict([sample(1, interpolate_between=[img, img])])
    with pytest.raises(InvalidRequest, match="class index"):
        predictor.predict([sample(1, class_index=3)])
    with pytest.raises(InvalidRequest, match="truncation"):
        predictor.predict([sample(1, truncation=float("inf"))])
    with pytest.raises(ValidationError, match="truncation"):  # the typed input refuses it
        sample(1, truncation=0.0)


@pytest.mark.skipif(
    not (WEIGHTS / "dcgan-digits.safetensors").exists(), reason="dcgan-digits not trained"
)
def test_shipped_dcgan_draws_the_requested_digit() -> None:
    from models.catalog import Catalog
    from models.classification.predictor import ClassifierPredictor

    catalog = Catalog.load()
    gan = GANPredictor(catalog.get("dcgan-digits"))
    gan.load()
    judge = ClassifierPredictor(catalog.get("lenet5-digits"))
    judge.load()
    out = gan.predict([sample(4, [100 + i for i in range(4)], class_index=k) for k in range(10)])
    images = [Image.open(io.BytesIO(a.data)) for r in out for a in r["images"]]  # type: ignore[index]
    labels = judge.predict([Request("classify", ClassifyArgs(image=im, top_k=1)) for im in images])
    hits = sum(r["predictions"][0]["index"] == i // 4 for i, r in enumerate(labels))  # type: ignore[index]
    assert hits >= 30, f"only {hits}/40 generated digits were judged the requested class"
