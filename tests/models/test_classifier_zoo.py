"""AlexNet, VGG, GoogLeNet and ResNet with tiny configs: shapes, the ideas each family
stands for, a few training steps, and a trained checkpoint served by the classify predictor."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.classification.alexnet import AlexNet, AlexNetConfig
from models.classification.googlenet import (
    AUX_WEIGHT,
    GoogLeNet,
    GoogLeNetConfig,
    Inception,
    googlenet_loss,
)
from models.classification.resnet import BasicBlock, Bottleneck, ResNet, ResNetConfig
from models.classification.vgg import VGG, VGGConfig
from models.data.shapes import make_classification

TINY_ALEXNET = AlexNetConfig(num_classes=4, widths=(4, 8, 8, 8, 8), hidden=16)
TINY_VGG = VGGConfig(num_classes=4, image_size=32, widths=(4, 8, 8, 8, 8), hidden=16)
TINY_GOOGLENET = GoogLeNetConfig(num_classes=4, width_divisor=16, stem_width=8, aux_hidden=16)
TINY_RESNET = ResNetConfig(num_classes=4, widths=(4, 8, 8, 8))


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    # Tiny models gain nothing from threads, and on a busy machine they lose a lot.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


# --- AlexNet -----------------------------------------------------------------------------


def test_alexnet_output_shape_and_its_ideas() -> None:
    model = AlexNet(TINY_ALEXNET)
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 4)
    conv1 = model.features[0]
    assert conv1.kernel_size == (7, 7) and conv1.stride == (2, 2)  # large strided first kernel
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3 and all(p.kernel_size > p.stride for p in pools)  # overlapping
    assert [m.p for m in model.classifier if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    assert any(isinstance(m, nn.LocalResponseNorm) for m in model.features)
    none = AlexNet(replace(TINY_ALEXNET, norm="none"))
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in none.features)


def test_alexnet_refuses_bad_configs_and_inputs() -> None:
    with pytest.raises(ValueError, match="five convolutions"):
        AlexNet(replace(TINY_ALEXNET, widths=(4, 8)))
    with pytest.raises(ValueError, match="too small"):
        AlexNet(replace(TINY_ALEXNET, image_size=8))
    with pytest.raises(ValueError, match="64x64"):
        AlexNet(TINY_ALEXNET)(torch.rand(1, 3, 32, 32))


# --- VGG ---------------------------------------------------------------------------------


@pytest.mark.parametrize("depth, convs", [(11, 8), (13, 10), (16, 13), (19, 16)])
def test_vgg_depth_patterns_use_only_3x3(depth: int, convs: int) -> None:
    model = VGG(replace(TINY_VGG, depth=depth))
    conv_layers = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(conv_layers) == convs and len(conv_layers) + len(linears) == depth
    assert all(m.kernel_size == (3, 3) and m.padding == (1, 1) for m in conv_layers)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 4)


def test_vgg_refuses_unknown_depth_and_odd_sizes() -> None:
    with pytest.raises(ValueError, match="unknown VGG depth 12"):
        VGG(replace(TINY_VGG, depth=12))
    with pytest.raises(ValueError, match="multiple of 32"):
        VGG(replace(TINY_VGG, image_size=48))


# --- GoogLeNet ---------------------------------------------------------------------------


def test_inception_module_concatenates_four_branches() -> None:
    module = Inception(8, (4, 2, 6, 1, 3, 5), norm="batch")
    assert module(torch.rand(2, 8, 16, 16)).shape == (2, 4 + 6 + 3 + 5, 16, 16)
    kernels = {m.kernel_size for m in module.modules() if isinstance(m, nn.Conv2d)}
    assert kernels == {(1, 1), (3, 3), (5, 5)}
    assert isinstance(module.branch_pool[0], nn.MaxPool2d)


def test_googlenet_aux_heads_in_training_only() -> None:
    model = GoogLeNet(TINY_GOOGLENET)
    x = torch.rand(3, 3, 64, 64)
    model.train()
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 3
    assert all(t.shape == (3, 4) for t in out)
    model.eval()
    logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (3, 4)
    # The eval output is the main head's, unchanged by the auxiliary heads.
    assert torch.allclose(logits, model.head(_trunk(model, x)), atol=1e-6)


def _trunk(model: GoogLeNet, x: torch.Tensor) -> torch.Tensor:
    h = model.stem(x)
    for block in model.blocks.values():
        h = block(h)
    return h


def test_googlenet_loss_adds_aux_losses_with_weight_0_3() -> None:
    y = torch.tensor([0, 1])
    main, a1, a2 = torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4)
    total, logits = googlenet_loss((main, a1, a2), y)
    expected = F.cross_entropy(main, y) + AUX_WEIGHT * (
        F.cross_entropy(a1, y) + F.cross_entropy(a2, y)
    )
    assert AUX_WEIGHT == 0.3 and torch.allclose(total, expected) and logits is main
    assert torch.allclose(googlenet_loss(main, y)[0], F.cross_entropy(main, y))


def test_googlenet_without_aux_heads_has_no_aux_weights() -> None:
    model = GoogLeNet(replace(TINY_GOOGLENET, aux_logits=False)).train()
    assert model.aux1 is None and not any(k.startswith("aux") for k in model.state_dict())
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 4)


# --- ResNet ------------------------------------------------------------------------------


def _zero_residual(block: BasicBlock | Bottleneck) -> None:
    norm = block.last_norm()
    nn.init.zeros_(norm.weight)
    nn.init.zeros_(norm.bias)


def test_resnet_identity_shortcut() -> None:
    block = BasicBlock(8, 8, stride=1).eval()
    assert isinstance(block.shortcut, nn.Identity)
    x = torch.randn(2, 8, 8, 8)
    _zero_residual(block)
    assert torch.equal(block(x), F.relu(x))  # the block reduces to relu(x)
    nn.init.ones_(block.bn2.weight)
    assert not torch.allclose(block(x), F.relu(x))  # and the branch does add to it


@pytest.mark.parametrize(
    "block_cls, cin, width, cout", [(BasicBlock, 8, 16, 16), (Bottleneck, 8, 4, 16)]
)
def test_resnet_projection_shortcut(block_cls: type, cin: int, width: int, cout: int) -> None:
    block = block_cls(cin, width, stride=2).eval()
    proj = block.shortcut
    assert (
        isinstance(proj, nn.Sequential)
        and proj[0].kernel_size == (1, 1)
        and proj[0].stride == (2, 2)
    )
    x = torch.randn(2, cin, 8, 8)
    _zero_residual(block)
    out = block(x)
    assert out.shape == (2, cout, 4, 4)
    assert torch.allclose(out, F.relu(proj(x)))


def test_resnet18_layout_and_output() -> None:
    model = ResNet(TINY_RESNET)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8  # 2 x 4 stages: with the stem and the head, 18 weight layers
    projections = [b for b in blocks if not isinstance(b.shortcut, nn.Identity)]
    assert len(projections) == 3  # the first block of stages 2-4 changes width and stride
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 4)
    assert all(not b.bn2.weight.detach().any() for b in blocks)  # zero-init residuals


def test_resnet_bottleneck_and_bad_configs() -> None:
    model = ResNet(replace(TINY_RESNET, block="bottleneck", layers=(1, 1, 1, 1)))
    assert model.head[-1].in_features == 8 * Bottleneck.expansion
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 4)
    with pytest.raises(ValueError, match="different stage counts: 3 vs 4"):
        ResNet(replace(TINY_RESNET, layers=(2, 2, 2)))
    with pytest.raises(ValueError, match="unknown block 'wide'"):
        ResNet(replace(TINY_RESNET, block="wide"))


# --- All families ------------------------------------------------------------------------


FAMILIES = [  # tiny configs on 32x32 inputs, dropout off so that the loss is comparable
    (AlexNet, replace(TINY_ALEXNET, image_size=32, dropout=0.0)),
    (VGG, replace(TINY_VGG, dropout=0.0)),
    (GoogLeNet, replace(TINY_GOOGLENET, dropout=0.0, aux_dropout=0.0)),
    (ResNet, TINY_RESNET),
]


@pytest.mark.parametrize("cls, config", FAMILIES, ids=[f[0].__name__ for f in FAMILIES])
def test_a_few_steps_lower_the_loss(cls: type[nn.Module], config: object) -> None:
    model = cls(config).train()
    x, y = make_classification(16, seed=4)
    x = (F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True) - 0.5) / 0.25
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss, _ = googlenet_loss(model(x), y)  # with the auxiliary losses for GoogLeNet
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_trained_googlenet_is_served_without_aux_heads(tmp_path: Path) -> None:
    from PIL import Image

    from models.catalog import ModelEntry
    from models.checkpoint import load_sidecar, load_state
    from models.classification.predictor import ClassifierPredictor
    from models.data.shapes import SHAPE_LABELS
    from models.kinds.classify import ClassifyArgs
    from models.predictor import Request
    from models.training.shapes import Recipe, _drop_aux, _train

    recipe = Recipe(epochs=1, epoch_size=64, lr=0.01, weight_decay=0.0, batch_size=16)
    metrics = _train(
        "tiny-googlenet",
        "googlenet",
        GoogLeNet(TINY_GOOGLENET),
        TINY_GOOGLENET,
        recipe,
        tmp_path,
        seed=0,
        quick=False,
        export=_drop_aux,
        n_test=64,
    )
    weights = tmp_path / "tiny-googlenet.safetensors"
    sidecar = load_sidecar(weights)
    assert sidecar["config"]["aux_logits"] is False and sidecar["labels"] == SHAPE_LABELS
    assert not any(k.startswith("aux") for k in load_state(weights))
    assert set(sidecar["normalize"]) == {"mean", "std"} and metrics["n_eval"] == 64
    assert 0.0 <= metrics["top1"] <= 1.0 and "top5" not in metrics  # four classes only
    entry = ModelEntry(
        name="tiny", family="googlenet", kinds=["classify"], weights=weights, labels=SHAPE_LABELS
    )
    predictor = ClassifierPredictor(entry)
    predictor.load()
    x, _ = make_classification(2, seed=1)
    images = [Image.fromarray((t.permute(1, 2, 0).numpy() * 255).astype("uint8")) for t in x]
    results = predictor.predict(
        [Request("classify", ClassifyArgs(image=im, top_k=2)) for im in images])
    for result in results:
        assert result is not None and len(result["predictions"]) == 2
        assert {p["label"] for p in result["predictions"]} <= set(SHAPE_LABELS)


def test_augment_crops_and_mirrors_deterministically() -> None:
    from models.training.shapes import augment

    x, _ = make_classification(8, seed=2)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)
    # Without padding or blur only mirror flips remain: each image is itself or its mirror.
    flips = augment(x, torch.Generator().manual_seed(3), pad=0, blur_p=0.0)
    for img, out in zip(x, flips, strict=True):
        assert torch.equal(out, img) or torch.equal(out, img.flip(-1))


@pytest.mark.parametrize("family", ["lenet5", "resnet"])
def test_a_traced_classifier_answers_as_the_eager_one_at_every_batch_size(
        family: str, tmp_path: Path) -> None:
    from PIL import Image

    from models.catalog import ModelEntry
    from models.classification.predictor import ClassifierPredictor
    from models.kinds.classify import ClassifyArgs
    from models.predictor import Request

    builtin = {e.name: e for e in _builtin_catalog()}
    name = "lenet5-digits" if family == "lenet5" else "resnet18-shapes"
    if name not in builtin:
        pytest.skip(f"{name} has no weights here")
    base = builtin[name].model_dump(exclude={"trace", "source"})
    eager = ClassifierPredictor(ModelEntry(**base, trace=False))
    traced = ClassifierPredictor(ModelEntry(**base, trace=True))
    eager.load()
    traced.load()
    assert isinstance(traced.model, torch.jit.ScriptModule)
    spec = builtin[name].input
    gen = torch.Generator().manual_seed(0)
    for n in (1, 3, 7):
        pixels = (torch.rand(n, spec.height, spec.width, spec.channels, generator=gen) * 255)
        images = [Image.fromarray(p.squeeze(-1).numpy().astype("uint8")) for p in pixels]
        requests = [Request("classify", ClassifyArgs(image=im, top_k=1 + i % 3))
                    for i, im in enumerate(images)]
        want, got = eager.predict(requests), traced.predict(requests)
        for w, g, r in zip(want, got, requests, strict=True):
            assert w is not None and g is not None
            assert len(g["predictions"]) == r.input.top_k
            assert [p["index"] for p in g["predictions"]] == [p["index"] for p in w["predictions"]]
            for pw, pg in zip(w["predictions"], g["predictions"], strict=True):
                assert pg["score"] == pytest.approx(pw["score"], abs=1e-5)


def _builtin_catalog() -> list:
    from models.catalog import Catalog

    return list(Catalog.load([]))
