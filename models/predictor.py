"""The predictor contract (in the manner of cog's ``BasePredictor``).

A predictor serves one catalog entry: ``load()`` once per process, then
``predict(batch, on_step=None)`` any number of times. ``predict`` is batch-first and pure:
no Celery, no FastAPI, no job store. Each ``Request`` carries the job kind and its typed
input, the kind's ``Args`` (``models/kinds``): a predictor reads ``request.input.steps``,
with images already decoded to ``PIL.Image``. The result for each request is a
JSON-able dict in which ``Artifact`` objects (images, masks) may appear anywhere; the
runtime stores them and replaces each with its link.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from models.kinds.common import Args

A = TypeVar("A", bound=Args)

if TYPE_CHECKING:
    import torch

    from models.catalog import ModelEntry
    from models.stepping import Stepper


@dataclass
class Artifact:
    """Bytes a job produces; ``meta`` holds width, height and, for generated images, seed."""

    name: str
    data: bytes
    content_type: str = "image/png"
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Request(Generic[A]):
    """One job's share of a batch: its kind and typed input (``GenerateArgs`` for
    ``generate``, and so on: ``models.kinds.KIND_SPECS[kind].args``)."""

    kind: str
    input: A
    pixels: Any = None  # what ``Predictor.preprocess`` made of the input, where it did


class StepCallback(Protocol):
    """Called by iterative predictors after each step.

    ``previews`` (when given) has one entry per live batch member: an ``Artifact`` or None.
    Returns, per live member, whether it is still wanted; a predictor drops the members
    marked False (canceled jobs) and goes on with the rest. Live members keep their original
    order, so the callback and the predictor agree on which is which.
    """

    def __call__(
        self, step: int, total: int, previews: Sequence[Artifact | None] | None = None
    ) -> Sequence[bool]: ...


class InvalidRequest(ValueError):
    """An input the model cannot serve, found only at prediction time (→ ``invalid_input``)."""


class Predictor:
    """Base class. Subclasses set ``kinds`` and implement ``load`` and ``predict``."""

    kinds: tuple[str, ...] = ()

    def __init__(self, entry: ModelEntry, device: torch.device | str = "cpu") -> None:
        self.entry = entry
        self.device = device

    def load(self) -> None:
        raise NotImplementedError

    def batch_key(self, request: Request) -> Hashable:
        """Requests with equal keys may share one ``predict`` call (same kind by default)."""
        return (request.kind,)

    def predict(
        self, batch: list[Request], on_step: StepCallback | None = None
    ) -> list[dict[str, Any] | None]:
        """One result per request (None for a member dropped through ``on_step``)."""
        raise NotImplementedError

    def preprocess(self, request: Request) -> None:
        """Work of one request that needs no device and no other request (resizing its
        image into a tensor, say), done on the job's own thread before it joins a batch,
        so that the device's thread does not do it between forwards: ``predict`` then
        finds it in ``request.pixels``. Nothing by default; ``predict`` must also take
        requests that were not preprocessed."""

    def stepper(self) -> Stepper | None:
        """Step-level batching of this model (``models.stepping``), where it has one: requests
        then join and leave a running sampling loop at step boundaries. None: static batches."""
        return None

    def memory_bytes(self) -> int:
        """Approximate device memory the loaded model holds (parameters and buffers)."""
        total = 0
        for module in getattr(self, "modules_for_memory", list)():
            for t in list(module.parameters()) + list(module.buffers()):
                total += t.numel() * t.element_size()
        return total
