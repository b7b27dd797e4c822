"""Device placement that predictors share.

On CUDA a module runs in the catalog entry's dtype (float16/bfloat16 weights, cast once at
load), channels-last (the layout cuDNN's convolutions prefer), and compiled with
``torch.compile`` when the entry says ``compile = true``; inputs reach the device through
pinned host memory with an asynchronous copy. On the CPU everything stays float32 and
contiguous: half precision is slow or missing there, and channels-last buys nothing.

An entry with ``trace = true`` runs its forward as one TorchScript call. An eager forward
gives up the GIL and takes it back at every op; in a worker whose job threads run Python
meanwhile, each take-back waits its turn (``convoy bench trace``: a ResNet-18 forward on 20
images took 829 ms eager and 37 ms traced beside two busy Python threads, 18 and 16 ms
alone). The
trace is taken with an example batch and holds for any batch size of convolutional
networks without shape-dependent Python. ``torch.jit.trace`` is deprecated in favour of
``torch.export`` with AOTInductor, which compiles C++ at load; the trace is kept for now
because it costs nothing at load.
"""

from __future__ import annotations

import warnings
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
                   device: torch.device | str, example: torch.Tensor | None = None
                   ) -> torch.nn.Module:
    """``module`` in eval mode on ``device``, in the entry's dtype and layout, compiled or
    traced (with ``example``, a CPU input batch) if the entry asks for it."""
    module = module.to(device).eval()
    if is_cuda(device):
        module = module.to(dtype=compute_dtype(entry, device), memory_format=torch.channels_last)
    if entry.trace and not entry.compile:
        if example is None:
            raise ValueError(f"{entry.name}: trace = true needs an example input")
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the deprecation, see above
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks of inputs
            traced = torch.jit.trace(module, to_device(example, device,
                                                       compute_dtype(entry, device)),
                                     check_trace=False)
        return traced  # type: ignore[no-any-return]
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
