"""Convolutional VAE: shapes, the KL term, the ELBO, and the ``reconstruct``/``sample`` predictor."""

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
from models.kinds.reconstruct import ReconstructArgs
from models.kinds.sample import SampleArgs
from models.predictor import InvalidRequest, Request
from models.vae import VAE, VAEConfig, elbo_loss, kl_divergence, psnr, vae
from models.vae_predictor import VAEPredictor
from tests.helpers import png_close

GREY = VAEConfig(in_channels=1, image_size=16, latent_dim=4, channels=(8, 16))
RGB = VAEConfig(in_channels=3, image_size=16, latent_dim=6, channels=(8, 16))


def tiny(config: VAEConfig = GREY) -> VAE:
    torch.manual_seed(0)
    return VAE(config)


@pytest.mark.parametrize("config", [GREY, RGB], ids=["grey", "rgb"])
def test_encode_decode_shapes_and_range(config: VAEConfig) -> None:
    model = tiny(config).eval().requires_grad_(False)
    x = torch.rand(3, config.in_channels, 16, 16)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (3, config.latent_dim)
    x_hat, mu2, _ = model(x)
    assert x_hat.shape == x.shape
    assert torch.equal(mu, mu2)
    assert 0.0 <= float(x_hat.min()) and float(x_hat.max()) <= 1.0
    assert model.decode(torch.randn(5, config.latent_dim)).shape == (5, config.in_channels, 16, 16)


def test_eval_decodes_the_mean_and_training_samples() -> None:
    model = tiny()
    x = torch.rand(2, 1, 16, 16)
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])
    assert torch.equal(model(x)[0], model.decode(model.encode(x)[0]))
    model.train()
    a = model(x, torch.Generator().manual_seed(1))[0]
    b = model(x, torch.Generator().manual_seed(2))[0]
    assert not torch.allclose(a, b)


def test_kl_is_exactly_zero_when_the_posterior_is_the_prior() -> None:
    zeros = torch.zeros(3, 8)
    assert torch.equal(kl_divergence(zeros, zeros), torch.zeros(3))
    assert (kl_divergence(torch.full((3, 8), 0.5), zeros) > 0).all()
    assert (kl_divergence(zeros, torch.full((3, 8), -1.0)) > 0).all()
    assert (kl_divergence(zeros, torch.full((3, 8), 1.0)) > 0).all()


def test_kl_matches_the_closed_form_of_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(4, 5, generator=gen), torch.randn(4, 5, generator=gen)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    assert torch.allclose(kl_divergence(mu, logvar), expected, atol=1e-5)


def test_elbo_weighs_the_kl_term_as_configured() -> None:
    x = torch.rand(2, 1, 4, 4)
    x_hat = torch.rand(2, 1, 4, 4)
    mu, logvar = torch.ones(2, 3), torch.zeros(2, 3)
    sse = float((x_hat - x).pow(2).sum() / 2)
    free = elbo_loss(x_hat, x, mu, logvar, kl_weight=0.0)
    assert float(free["loss"]) == pytest.approx(sse)
    assert float(free["kl"]) == pytest.approx(1.5)  # 0.5 * sum(mu^2) per sample
    weighted = elbo_loss(x_hat, x, mu, logvar, kl_weight=0.5)
    assert float(weighted["loss"]) == pytest.approx(sse + 0.75)
    with pytest.raises(ValueError, match="kl_weight"):
        elbo_loss(x_hat, x, mu, logvar, kl_weight=-1.0)


def test_reparameterisation_lets_gradients_reach_mean_and_variance() -> None:
    mu = torch.zeros(2, 3, requires_grad=True)
    logvar = torch.zeros(2, 3, requires_grad=True)
    z = VAE.reparameterize(mu, logvar, torch.Generator().manual_seed(0))
    z.pow(2).sum().backward()
    assert mu.grad is not None and logvar.grad is not None
    assert logvar.grad.abs().sum() > 0
    again = VAE.reparameterize(mu, logvar, torch.Generator().manual_seed(0))
    assert torch.equal(z, again)


def test_a_few_steps_lower_the_loss() -> None:
    model = tiny()
    x = torch.zeros(8, 1, 16, 16)
    for i in range(8):  # a bright square in a different place in each image
        x[i, 0, i : i + 6, 8 - i : 14 - i] = 1.0
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    first = model.loss(x, gen)["loss"].item()
    for _ in range(20):
        loss = model.loss(x, gen)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.loss(x, gen)["loss"].item() < 0.5 * first


@pytest.mark.parametrize(
    "kwargs, words",
    [({"image_size": 20}, "divisible"), ({"channels": []}, "channels"), ({"in_channels": 2}, "in_channels"),
     ({"norm": "layer"}, "norm"), ({"latent_dim": 0}, "latent_dim"),
     ({"latent_side": 8}, "latent_side"), ({"latent_dim": 30, "latent_side": 4}, "latent_side")],
)
def test_bad_configs_are_refused_in_plain_words(kwargs: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        vae(**kwargs)


def test_a_spatial_latent_keeps_where_things_are_behind_the_flat_interface() -> None:
    config = VAEConfig(in_channels=3, image_size=16, latent_dim=4 * 4 * 4, channels=(8, 16),
                       latent_side=4)
    model = VAE(config).eval()
    x = torch.zeros(2, 3, 16, 16)
    x[0, :, :4, :4] = 1.0  # a corner lit in one image only
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (2, 64)
    assert model.decode(mu).shape == (2, 3, 16, 16)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    # the code of the far corner does not see the lit one: a 4x4 map, one cell per 4x4 patch
    maps = mu.view(2, 4, 4, 4)
    assert torch.allclose(maps[0, :, 3, 3], maps[1, :, 3, 3])
    assert not torch.allclose(maps[0, :, 0, 0], maps[1, :, 0, 0])


def test_psnr_of_a_known_error() -> None:
    x = torch.zeros(1, 1, 4, 4)
    assert float(psnr(x + 0.1, x)[0]) == pytest.approx(20.0, abs=1e-4)


# ---- the predictor on tiny checkpoints ----------------------------------------------------


def make_predictor(tmp_path: Path, config: VAEConfig) -> VAEPredictor:
    model = tiny(config)
    with torch.no_grad():  # a few training passes give batch norm non-trivial statistics
        for _ in range(3):
            model(torch.rand(8, config.in_channels, 16, 16))
    weights = tmp_path / f"tiny-vae-{config.in_channels}.safetensors"
    size = {"channels": config.in_channels, "height": 16, "width": 16}
    save_checkpoint(weights, model, {"arch": "vae", "config": config_dict(config), "labels": [], "input": size})
    entry = ModelEntry(name="tiny-vae", family="vae", kinds=["reconstruct", "sample"], weights=weights,
                       input=size)
    p = VAEPredictor(entry)
    p.load()
    return p


@pytest.fixture(scope="module")
def grey(tmp_path_factory: pytest.TempPathFactory) -> VAEPredictor:
    return make_predictor(tmp_path_factory.mktemp("vae"), GREY)


@pytest.fixture(scope="module")
def rgb(tmp_path_factory: pytest.TempPathFactory) -> VAEPredictor:
    return make_predictor(tmp_path_factory.mktemp("vae"), RGB)


def image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


def pixels(artifact) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.asarray(Image.open(io.BytesIO(artifact.data)))


def sample(n: int = 2, seeds: list[int] | None = None, **extra: object) -> Request:
    inp = {"seeds": seeds if seeds is not None else list(range(n)), "class_index": None,
           "truncation": 1.0, "interpolate_between": None, "steps": None, **extra}
    return Request("sample", SampleArgs(**inp))


def test_reconstruct_reports_latent_mse_and_psnr(grey: VAEPredictor) -> None:
    (out,) = grey.predict([Request("reconstruct", ReconstructArgs(image=image(50, 40, "L")))])
    assert out["reconstruction"].name == "reconstruction.png"
    assert pixels(out["reconstruction"]).shape == (16, 16)
    assert len(out["latent"]) == GREY.latent_dim and all(isinstance(v, float) for v in out["latent"])
    assert out["mse"] > 0
    assert out["psnr"] == pytest.approx(-10 * np.log10(out["mse"]), rel=1e-4)
    assert out["input_size"] == {"height": 16, "width": 16}


def test_reconstruct_converts_rgb_for_a_grey_model_and_grey_for_an_rgb_model(
    grey: VAEPredictor, rgb: VAEPredictor
) -> None:
    (a,) = grey.predict([Request("reconstruct", ReconstructArgs(image=image(20, 30, "RGB")))])
    (b,) = rgb.predict([Request("reconstruct", ReconstructArgs(image=image(20, 30, "L")))])
    (c,) = rgb.predict([Request("reconstruct", ReconstructArgs(image=image(20, 30, "RGBA")))])
    assert pixels(a["reconstruction"]).shape == (16, 16)
    assert pixels(b["reconstruction"]).shape == pixels(c["reconstruction"]).shape == (16, 16, 3)
    assert len(b["latent"]) == RGB.latent_dim


def test_reconstructions_share_one_forward_pass(grey: VAEPredictor) -> None:
    calls: list[int] = []
    handle = grey.model.encoder.register_forward_hook(lambda _m, args, _o: calls.append(len(args[0])))
    images = [image(16, 16, "L", seed=i) for i in range(3)]
    together = grey.predict([Request("reconstruct", ReconstructArgs(image=im)) for im in images])
    handle.remove()
    assert calls == [3]
    (alone,) = grey.predict([Request("reconstruct", ReconstructArgs(image=images[1]))])
    assert png_close(alone["reconstruction"].data, together[1]["reconstruction"].data)
    assert alone["latent"] == pytest.approx(together[1]["latent"], abs=1e-6)


def test_sample_is_reproducible_by_seed(rgb: VAEPredictor) -> None:
    (a,) = rgb.predict([sample(3, [7, 8, 9])])
    b = rgb.predict([sample(1, [8]), sample(2, [9, 7])])[0]  # same seed, other batch
    assert [im.name for im in a["images"]] == ["image-0.png", "image-1.png", "image-2.png"]
    assert [im.meta["seed"] for im in a["images"]] == [7, 8, 9]
    assert pixels(a["images"][0]).shape == (16, 16, 3)
    assert png_close(b["images"][0].data, a["images"][1].data)
    assert a["images"][0].data != a["images"][1].data


def test_truncation_shrinks_the_prior_draw(rgb: VAEPredictor) -> None:
    (full,) = rgb.predict([sample(1, [3])])
    (none,) = rgb.predict([sample(1, [3], truncation=1e-6)])
    (mean,) = rgb.predict([sample(1, [99], truncation=1e-6)])
    assert full["images"][0].data != none["images"][0].data
    assert np.abs(pixels(none["images"][0]).astype(int) - pixels(mean["images"][0]).astype(int)).max() <= 1


def test_interpolation_path_runs_between_the_two_reconstructions(grey: VAEPredictor) -> None:
    a, b = image(16, 16, "L", seed=1), image(24, 24, "RGB", seed=2)
    (path,) = grey.predict([sample(1, interpolate_between=[a, b], steps=5)])
    names = [im.name for im in path["images"]]
    assert names == [f"path-{i}.png" for i in range(5)]
    assert [im.meta["t"] for im in path["images"]] == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    ra, rb = grey.predict([Request("reconstruct", ReconstructArgs(image=a)), Request("reconstruct", ReconstructArgs(image=b))])
    assert png_close(path["images"][0].data, ra["reconstruction"].data)
    assert png_close(path["images"][-1].data, rb["reconstruction"].data)
    assert path["images"][2].data not in (ra["reconstruction"].data, rb["reconstruction"].data)


def test_sample_refusals_and_batch_keys(grey: VAEPredictor) -> None:
    with pytest.raises(InvalidRequest, match="class"):
        grey.predict([sample(1, class_index=0)])
    with pytest.raises(ValidationError, match="steps"):  # the typed input refuses a 1-point path
        sample(1, interpolate_between=[image(8, 8), image(8, 8)], steps=1)
    with pytest.raises(ValidationError, match="interpolate_between"):
        sample(1, interpolate_between=[image(8, 8)])
    rec = Request("reconstruct", ReconstructArgs(image=image(8, 8)))
    assert grey.batch_key(rec) != grey.batch_key(sample(1))
    assert grey.batch_key(sample(1)) == grey.batch_key(sample(3, steps=4))
