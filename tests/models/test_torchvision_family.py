"""Torchvision architectures with the user's weights: the .pth converter refuses anything but
tensors (and runs nothing a pickle carries), serving refuses .pth outright, and a randomly
initialised resnet18 saved to safetensors classifies through the predictor."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from models.catalog import ModelEntry
from models.checkpoint import UnsafeCheckpoint, load_state
from models.classification.torchvision_predictor import TorchvisionPredictor, preprocess_for
from models.convert import convert_pth
from models.kinds.classify import ClassifyArgs
from models.predictor import Request


class _Payload:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_converter_refuses_a_pickle_that_would_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pth"
    torch.save({"conv.weight": torch.zeros(2), "payload": _Payload(marker)}, src)
    assert b"system" in src.read_bytes() and not marker.exists()  # the payload is in there
    with pytest.raises(ValueError, match="refused"):
        convert_pth(src, tmp_path / "evil.safetensors")
    assert not marker.exists()
    assert not (tmp_path / "evil.safetensors").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ({"layer": {"weight": torch.zeros(2)}}, "flat mapping"),
        ({"weight": torch.zeros(2), "epoch": 3}, "flat mapping"),
        ([torch.zeros(2)], "not a state dict"),
        ({}, "empty"),
    ],
)
def test_converter_refuses_anything_but_a_flat_state_dict(
    tmp_path: Path, content: object, message: str
) -> None:
    src = tmp_path / "odd.pth"
    torch.save(content, src)
    with pytest.raises(ValueError, match=message):
        convert_pth(src, tmp_path / "odd.safetensors")


def test_converter_writes_the_same_tensors(tmp_path: Path) -> None:
    state = {"a.weight": torch.randn(3, 4), "a.bias": torch.randn(3), "n": torch.tensor(7)}
    state["view"] = state["a.weight"][0]  # shares storage, which safetensors refuses as is
    torch.save(state, tmp_path / "model.pth")
    out = convert_pth(tmp_path / "model.pth", tmp_path / "model.safetensors")
    loaded = load_state(out)
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    with pytest.raises(ValueError, match="safetensors"):
        convert_pth(tmp_path / "model.pth", tmp_path / "model.bin")


def _resnet18_entry(tmp_path: Path, weights: Path, **extra: object) -> ModelEntry:
    labels = [f"class-{i}" for i in range(10)]
    return ModelEntry(
        name="resnet18-random",
        family="torchvision",
        arch="resnet18",
        kinds=["classify"],
        weights=weights,
        labels=labels,
        **extra,
    )


def test_serving_refuses_a_pth_outright(tmp_path: Path) -> None:
    import torchvision

    pth = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), pth)
    with pytest.raises(UnsafeCheckpoint, match="only .safetensors"):
        load_state(pth)
    with pytest.raises(UnsafeCheckpoint):
        TorchvisionPredictor(_resnet18_entry(tmp_path, pth)).load()


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    path = tmp_path_factory.mktemp("tv") / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model


def _image(seed: int, size: tuple[int, int]) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    data = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(data)


def test_random_resnet18_classifies_with_torchvision_preprocessing(
    tmp_path: Path, resnet18_weights: tuple[Path, torch.nn.Module]
) -> None:
    import torchvision

    path, reference = resnet18_weights
    predictor = TorchvisionPredictor(_resnet18_entry(tmp_path, path))
    predictor.load()
    images = [_image(1, (300, 260)), _image(2, (180, 240)).convert("L")]
    results = predictor.predict([Request("classify", ClassifyArgs(image=im, top_k=3)) for im in images])
    transform = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    with torch.inference_mode():
        expected = torch.softmax(
            reference(torch.stack([transform(im.convert("RGB")) for im in images])), -1
        )
    for result, probs in zip(results, expected, strict=True):
        assert result is not None and result["input_size"] == {"height": 224, "width": 224}
        preds = result["predictions"]
        assert len(preds) == 3 and preds[0]["score"] >= preds[1]["score"] >= preds[2]["score"]
        assert preds[0]["label"] == f"class-{preds[0]['index']}"
        # Same network, torchvision's own transform: the scores agree within resampling noise.
        for p in preds:
            assert abs(p["score"] - float(probs[p["index"]])) < 0.02
    assert predictor.memory_bytes() > 40_000_000  # resnet18's 11.7M float32 parameters


def test_a_request_preprocessed_on_its_own_thread_gets_the_same_answer(
    tmp_path: Path, resnet18_weights: tuple[Path, torch.nn.Module]
) -> None:
    path, _ = resnet18_weights
    predictor = TorchvisionPredictor(_resnet18_entry(tmp_path, path))
    predictor.load()
    images = [_image(3, (300, 260)), _image(4, (64, 64))]
    plain = [Request("classify", ClassifyArgs(image=im, top_k=4)) for im in images]
    early = [Request("classify", ClassifyArgs(image=im, top_k=4)) for im in images]
    for request in early[:1]:  # a batch may mix both
        predictor.preprocess(request)
    assert early[0].pixels is not None and early[0].pixels.shape == (3, 224, 224)
    for a, b in zip(predictor.predict(plain), predictor.predict(early), strict=True):
        assert a is not None and b is not None
        assert [p["index"] for p in a["predictions"]] == [p["index"] for p in b["predictions"]]
        for p, q in zip(a["predictions"], b["predictions"], strict=True):
            assert abs(p["score"] - q["score"]) < 1e-4


def test_preprocessing_follows_the_architecture() -> None:
    assert (preprocess_for("resnet18").resize, preprocess_for("resnet18").crop) == (256, 224)
    assert preprocess_for("inception_v3").crop == 299
    scaled = preprocess_for("resnet18", 112)
    assert (scaled.resize, scaled.crop) == (128, 112)


def test_googlenet_builds_without_aux_heads(tmp_path: Path) -> None:
    from models.classification.torchvision_predictor import build

    model = build("googlenet", 5)
    assert model.aux1 is None and model.aux2 is None
    with pytest.raises(ValueError, match="unknown torchvision"):
        build("not_a_net", 5)
