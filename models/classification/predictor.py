"""The ``classify`` predictor for the built-in classifiers (weights + sidecar)."""

from __future__ import annotations

from typing import Any

import torch

from models.checkpoint import load_model
from models.device import compute_dtype, prepare_module, to_device
from models.images import batch_tensor, normalization
from models.kinds.classify import ClassifyArgs
from models.predictor import Predictor, Request, StepCallback
from models.registry import register_predictor


def top_k(logits: torch.Tensor, labels: list[str], k: int) -> list[dict[str, Any]]:
    """Softmax scores of the k best classes, best first."""
    return top_k_rows(logits[None], labels, [k])[0]


def top_k_rows(logits: torch.Tensor, labels: list[str], ks: list[int]
               ) -> list[list[dict[str, Any]]]:
    """``top_k`` of each row of a batch, in two tensor ops for the whole batch."""
    probs = torch.softmax(logits.float(), dim=-1)
    most = min(max(ks), probs.shape[-1])
    scores, indices = probs.topk(most, dim=-1)
    return [
        [{"label": labels[i] if i < len(labels) else str(i), "index": int(i), "score": float(s)}
         for s, i in zip(row_s[:k], row_i[:k], strict=True)]
        for row_s, row_i, k in zip(scores.tolist(), indices.tolist(), ks, strict=True)
    ]


@register_predictor("lenet5", "alexnet", "vgg", "googlenet", "resnet")
class ClassifierPredictor(Predictor):
    kinds = ("classify",)

    def load(self) -> None:
        assert self.entry.weights is not None, f"{self.entry.name} has no weights"
        model, sidecar = load_model(self.entry.weights, self.entry.sha256)
        spec = self.entry.input
        example = torch.zeros(2, spec.channels, spec.height, spec.width)
        self.model = prepare_module(model, self.entry, self.device, example)
        self.dtype = compute_dtype(self.entry, self.device)
        # inputs are normalised on the host, in float32, before they travel
        self.mean, self.std = normalization(sidecar, self.entry.input.channels)

    def modules_for_memory(self) -> list[torch.nn.Module]:
        return [self.model]

    @torch.inference_mode()
    def predict(
        self, batch: list[Request[ClassifyArgs]], on_step: StepCallback | None = None
    ) -> list[dict[str, Any] | None]:
        spec = self.entry.input
        x = batch_tensor([r.input.image for r in batch], spec.channels, spec.height, spec.width)
        x = to_device((x - self.mean) / self.std, self.device, self.dtype)
        logits = self.model(x)
        ranked = top_k_rows(logits, self.entry.labels, [r.input.top_k for r in batch])
        size = {"height": spec.height, "width": spec.width}
        return [{"predictions": p, "input_size": dict(size)} for p in ranked]
