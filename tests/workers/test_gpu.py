"""On a CUDA device: half precision and channels-last classification, and a real device
out-of-memory error splitting a batch. Skipped without CUDA (scripts/gpu_check.sh runs them)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from models.catalog import Catalog
from models.kinds.generate import GenerateArgs
from models.predictor import Predictor, Request, StepCallback
from models.registry import register_predictor
from tests.workers.test_batcher import behind_gate, item, loaded, model
from workers.batcher import Batcher, OutOfMemory

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_float16_channels_last_classify_agrees_with_the_cpu() -> None:
    from models.classification.predictor import ClassifierPredictor
    from tests.helpers import digit_images
    from workers.contract import prepare

    entry = Catalog.load().get("lenet5-digits")
    half = entry.model_copy(update={"dtype": "float16"})
    gpu, cpu = ClassifierPredictor(half, "cuda"), ClassifierPredictor(entry, "cpu")
    gpu.load()
    cpu.load()
    conv = next(p for p in gpu.model.parameters() if p.ndim == 4)
    assert conv.is_cuda and conv.dtype == torch.float16
    assert conv.is_contiguous(memory_format=torch.channels_last)
    images, _ = digit_images(64)
    batch = [Request("classify", prepare("classify", {"image": im, "top_k": 1}, entry, 1 << 20))
             for im in images]
    on_gpu, on_cpu = gpu.predict(batch), cpu.predict(batch)
    for g, c in zip(on_gpu, on_cpu, strict=True):
        assert g["predictions"][0]["label"] == c["predictions"][0]["label"]  # type: ignore[index]
        assert g["predictions"][0]["score"] == pytest.approx(  # type: ignore[index]
            c["predictions"][0]["score"], abs=0.02)  # type: ignore[index]


@register_predictor("test-cuda-oom")
class DeviceHog(Predictor):
    """Allocates a share of the free device memory per image: a batch of four does not fit,
    two do; a request of ``n > 1`` images asks for more than the device has on its own."""

    kinds = ("generate",)

    def load(self) -> None:
        free, _ = torch.cuda.mem_get_info()
        self.share = int(free * 0.3)

    def predict(self, batch: list[Request], on_step: StepCallback | None = None
                ) -> list[dict[str, Any] | None]:
        images = sum(4 * r.input.n if r.input.n > 1 else 1 for r in batch)
        hog = torch.empty(self.share * images, dtype=torch.uint8, device="cuda")
        hog.fill_(1)
        del hog
        return [{"seed": r.input.seeds[0]} for r in batch]


def test_a_device_out_of_memory_splits_the_batch_and_the_device_recovers() -> None:
    hog = loaded(DeviceHog, model("hog", family="test-cuda-oom", max_batch=4))
    sizes: list[int] = []

    def request(seed: int, n: int = 1) -> Request:
        return Request("generate", GenerateArgs(seeds=[seed + i for i in range(n)], steps=1))

    fits = [item(hog, s, request=request(s)) for s in (1, 2, 3, 4)]
    batcher = Batcher(on_batch=sizes.append)
    behind_gate(batcher, fits)
    assert [it.future.result(timeout=60)["seed"] for it in fits] == [1, 2, 3, 4]
    assert sizes[1:] == [4, 2, 2]  # four did not fit: two halves did

    too_big = item(hog, 10, request=request(10, n=2))
    batcher.submit(too_big)
    with pytest.raises(OutOfMemory):
        too_big.future.result(timeout=60)
    after = item(hog, 20, request=request(20))
    batcher.submit(after)
    assert after.future.result(timeout=60) == {"seed": 20}  # memory was given back
