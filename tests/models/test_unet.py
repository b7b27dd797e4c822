"""U-Net: shapes, skip connections, validation, the IoU evaluation and the ``segment`` predictor."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.catalog import ModelEntry
from models.checkpoint import config_dict, save_checkpoint
from models.images import batch_tensor
from models.kinds.segment import SegmentArgs
from models.predictor import Request
from models.segmentation.predictor import SegmentationPredictor
from models.segmentation.unet import UNet, UNetConfig, unet
from models.training.unet import evaluate_segmentation
from tests.helpers import masks_agree

TINY = UNetConfig(in_channels=3, num_classes=3, base_width=4, depth=2)
LABELS = ["background", "disc", "box"]


def tiny(config: UNetConfig = TINY) -> UNet:
    torch.manual_seed(0)
    return UNet(config).eval()


def test_output_has_the_input_size_and_one_channel_per_class() -> None:
    model = tiny()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    assert model(torch.rand(1, 3, 48, 20)).shape == (1, 3, 48, 20)


def test_width_doubles_per_level_and_up_convolutions_are_transposed() -> None:
    model = tiny(UNetConfig(base_width=8, depth=3))
    widths = [block.block[0].out_channels for block in model.down]
    assert widths == [8, 16, 32]
    assert model.bottleneck.block[0].out_channels == 64
    assert all(isinstance(up.up, torch.nn.ConvTranspose2d) for up in model.up)
    # each decoder block takes the up-convolved features concatenated with the skip
    assert [up.conv.block[0].in_channels for up in model.up] == [64, 32, 16]


def test_decoder_receives_each_encoder_output_as_its_skip() -> None:
    model = tiny()
    encoded: list[torch.Tensor] = []
    skips: list[torch.Tensor] = []
    for block in model.down:
        block.register_forward_hook(lambda _m, _i, out: encoded.append(out))
    for up in model.up:
        up.register_forward_pre_hook(lambda _m, args: skips.append(args[1]))
    model(torch.rand(1, 3, 16, 16))
    assert len(skips) == len(encoded) == TINY.depth
    assert all(s is e for s, e in zip(skips, reversed(encoded), strict=True))


def test_perturbing_only_the_skip_changes_the_output() -> None:
    """The finest encoder features reach the decoder's last block only through the skip."""
    model = tiny()
    x = torch.rand(1, 3, 16, 16)
    base = model(x)
    handle = model.up[-1].register_forward_pre_hook(lambda _m, args: (args[0], args[1] + 1.0))
    changed = model(x)
    handle.remove()
    assert not torch.allclose(base, changed, atol=1e-4)
    assert torch.allclose(model(x), base)  # and nothing else changed


@pytest.mark.parametrize(
    "kwargs, words",
    [({"depth": 0}, "depth"), ({"num_classes": 1}, "num_classes"), ({"norm": "layer"}, "norm"),
     ({"dropout": 1.0}, "dropout")],
)
def test_bad_configs_are_refused_in_plain_words(kwargs: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        unet(**kwargs)


def test_a_side_not_divisible_by_the_pooling_is_refused() -> None:
    with pytest.raises(ValueError, match="divisible"):
        tiny()(torch.rand(1, 3, 18, 16))
    with pytest.raises(ValueError, match="expected input"):
        tiny()(torch.rand(1, 1, 16, 16))


class OneHot(torch.nn.Module):
    """Returns logits that pick the given masks, to check the IoU bookkeeping."""

    def __init__(self, masks: torch.Tensor, k: int) -> None:
        super().__init__()
        self.masks, self.k, self.i = masks, k, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.masks[self.i : self.i + len(x)]
        self.i += len(x)
        return torch.nn.functional.one_hot(m, self.k).permute(0, 3, 1, 2).float()


def test_iou_is_intersection_over_union_per_class() -> None:
    true = torch.zeros(1, 4, 4, dtype=torch.long)
    true[0, :2] = 1  # 8 pixels of class 1, 8 of class 0
    pred = true.clone()
    pred[0, 2, :2] = 1  # 2 background pixels called class 1
    result = evaluate_segmentation(OneHot(pred, 3), torch.zeros(1, 3, 4, 4), true, ["bg", "a", "b"])
    assert result["iou"]["bg"] == pytest.approx(6 / 8)
    assert result["iou"]["a"] == pytest.approx(8 / 10)
    assert result["iou"]["b"] == 0.0  # absent everywhere: no union, counted as 0
    assert result["pixel_accuracy"] == pytest.approx(14 / 16)
    assert result["mean_iou"] == pytest.approx((6 / 8 + 8 / 10) / 3)


# ---- the segment predictor on a tiny checkpoint -------------------------------------------


def make_predictor(tmp_path: Path, channels: int) -> SegmentationPredictor:
    config = UNetConfig(in_channels=channels, num_classes=3, base_width=4, depth=2)
    model = tiny(config)
    with torch.no_grad():  # a few training passes give batch norm non-trivial statistics
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # running statistics = the plain average of these passes
        for _ in range(3):
            model(torch.rand(4, channels, 16, 16))
        # a head that contrasts pairs of (non-negative) features, so masks hold several classes
        contrast = torch.tensor([[1.0, -1.0, 0.0, 0.0], [-1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]])
        model.head.weight.copy_(contrast[:, :, None, None])
        model.head.bias.zero_()
    model.eval()
    weights = tmp_path / f"tiny-unet-{channels}.safetensors"
    save_checkpoint(weights, model, {"arch": "unet", "config": config_dict(config), "labels": LABELS,
                                     "input": {"channels": channels, "height": 16, "width": 16}})
    entry = ModelEntry(name="tiny-unet", family="unet", kinds=["segment"], weights=weights,
                       labels=LABELS, input={"channels": channels, "height": 16, "width": 16})
    p = SegmentationPredictor(entry)
    p.load()
    return p


def random_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).convert(mode)


def decode(artifact) -> Image.Image:  # type: ignore[no-untyped-def]
    return Image.open(io.BytesIO(artifact.data))


def test_segment_returns_a_mask_of_the_input_size_with_areas(tmp_path: Path) -> None:
    p = make_predictor(tmp_path, 3)
    image = random_image(50, 37)
    (out,) = p.predict([Request("segment", SegmentArgs(image=image))])
    mask = decode(out["mask"])
    assert mask.mode == "L" and mask.size == (50, 37)
    assert out["mask"].name == "mask.png" and out["mask"].meta["width"] == 50
    values = np.asarray(mask)
    assert values.max() < 3
    overlay = decode(out["overlay"])
    assert overlay.mode == "RGB" and overlay.size == (50, 37)
    assert [c["label"] for c in out["classes"]] == LABELS
    assert [c["pixels"] for c in out["classes"]] == np.bincount(values.ravel(), minlength=3).tolist()
    assert sum(c["fraction"] for c in out["classes"]) == pytest.approx(1.0)
    # the overlay leaves background pixels as they were and tints the others
    base = np.asarray(image)
    tinted = np.asarray(overlay)
    assert (tinted[values == 0] == base[values == 0]).all()
    if (values > 0).any():
        assert (tinted[values > 0] != base[values > 0]).any()


def test_mask_is_scaled_back_with_nearest_neighbour(tmp_path: Path) -> None:
    p = make_predictor(tmp_path, 3)
    image = random_image(32, 32, seed=3)
    (out,) = p.predict([Request("segment", SegmentArgs(image=image))])
    with torch.no_grad():
        small = p.model(batch_tensor([image], 3, 16, 16)).argmax(1)[0].numpy()
    assert len(np.unique(small)) > 1  # the check below means something
    assert (np.asarray(decode(out["mask"])) == np.kron(small, np.ones((2, 2), dtype=small.dtype))).all()


def test_grayscale_image_into_rgb_model_and_rgb_into_grayscale_model(tmp_path: Path) -> None:
    rgb_model, grey_model = make_predictor(tmp_path, 3), make_predictor(tmp_path, 1)
    (a,) = rgb_model.predict([Request("segment", SegmentArgs(image=random_image(20, 24, "L")))])
    (b,) = grey_model.predict([Request("segment", SegmentArgs(image=random_image(20, 24, "RGB")))])
    (c,) = grey_model.predict([Request("segment", SegmentArgs(image=random_image(20, 24, "RGBA")))])
    for out in (a, b, c):
        assert decode(out["mask"]).size == (20, 24)
        assert decode(out["overlay"]).mode == "RGB"


def test_a_batch_shares_one_forward_pass_and_matches_single_runs(tmp_path: Path) -> None:
    p = make_predictor(tmp_path, 3)
    calls: list[int] = []
    p.model.register_forward_hook(lambda _m, args, _o: calls.append(len(args[0])))
    images = [random_image(16 + 8 * i, 16, seed=i) for i in range(3)]
    together = p.predict([Request("segment", SegmentArgs(image=im)) for im in images])
    assert calls == [3]
    for image, out in zip(images, together, strict=True):
        (alone,) = p.predict([Request("segment", SegmentArgs(image=image))])
        assert masks_agree(alone["mask"].data, out["mask"].data)


def test_a_large_input_gets_its_mask_and_overlay_at_the_bounded_size(tmp_path: Path) -> None:
    p = make_predictor(tmp_path, 3)
    p.entry = p.entry.model_copy(update={"limits": p.entry.limits.model_copy(
        update={"max_side": 64})})
    image = Image.new("RGB", (400, 200), (200, 30, 30))
    (out,) = p.predict([Request("segment", SegmentArgs(image=image))])
    assert decode(out["mask"]).size == (64, 32) and decode(out["overlay"]).size == (64, 32)
    assert out["mask"].meta["width"] == 64
    assert sum(c["pixels"] for c in out["classes"]) == 64 * 32


def test_class_areas_name_the_overlay_colour_of_each_class() -> None:
    from models.segmentation.predictor import class_areas, overlay

    mask = np.array([[0, 1], [2, 2]], dtype=np.uint8)
    areas = class_areas(mask, ["background", "circle", "square"], 3)
    tinted = np.asarray(overlay(Image.new("RGB", (2, 2), (0, 0, 0)), mask, alpha=1.0))
    for area in areas[1:]:
        y, x = np.argwhere(mask == area["index"])[0]
        assert area["colour"] == "#{:02x}{:02x}{:02x}".format(*tinted[y, x])
    assert [a["pixels"] for a in areas] == [1, 1, 2]
