"""Device placement that predictors share.

On CUDA a module runs in the catalog entry's dtype (float16/bfloat16 weights, cast once at
load), channels-last (the layout cuDNN's convolutions prefer), and compiled with
``torch.compile`` when the entry says ``compile = true``; inputs reach the device through
pinned host memory with an asynchronous copy. On the CPU everything stays float32 and
contiguous: half precision is slow or missing there, and channels-last buys nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from models.catalog import ModelEntry


def is_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def compute_dtype(entry: ModelEntry, device: torch.device | str) -> torch.dtype:
    """The dtype a model runs in: the entry's on CUDA, float32 elsewhere."""
    if not is_cuda(device):
        return torch.float32
    return {"float32": torch.float32, "float16": torch.float16,
            "bfloat16": torch.bfloat16}[entry.dtype]


def prepare_module(module: torch.nn.Module, entry: ModelEntry,
                   device: torch.device | str) -> torch.nn.Module:
    """``module`` in eval mode on ``device``, in the entry's dtype and layout, compiled if
    the entry asks for it."""
    module = module.to(device).eval()
    if is_cuda(device):
        module = module.to(dtype=compute_dtype(entry, device), memory_format=torch.channels_last)
    if entry.compile:
        # dynamic: batches come in every size up to max_batch; one graph serves them all
        module = torch.compile(module, dynamic=True)  # type: ignore[assignment]
    return module


def to_device(batch: torch.Tensor, device: torch.device | str,
              dtype: torch.dtype | None = None) -> torch.Tensor:
    """A CPU batch on ``device`` in ``dtype``: copied from pinned memory without blocking,
    and channels-last for (B, C, H, W) batches, on CUDA."""
    if not is_cuda(device):
        return batch.to(device=device, dtype=dtype or batch.dtype)
    batch = batch.pin_memory().to(device, non_blocking=True)
    if batch.ndim == 4:
        return batch.to(dtype=dtype or batch.dtype, memory_format=torch.channels_last)
    return batch.to(dtype=dtype or batch.dtype)
