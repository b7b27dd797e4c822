"""``convoy bench transfer``: what a pretrained base is worth with few labels.

Three tasks built here without downloads, each with ``PER_CLASS`` training images per
class and a large held-out set that training never sees:

- shapes → new classes: ``resnet18-shapes`` (filled circles, squares, triangles, stars)
  moved to ellipses, crosses, crescents and hexagons (``shapes-new``, 2000 held out);
- shapes → outlines: the same base moved to its own classes drawn as outlines
  (``shapes-outline``, 2000 held out);
- digits 0–4 → 5–9: a LeNet-5 trained here on the digits 0–4 alone (every training-split
  image of them) moved to the digits 5–9 (``digits-5-9``; held out: every 5–9 not drawn).

Rows: ``linear_probe``, ``finetune`` and ``scratch`` with the same hyperparameters, each
the mean over ``SEEDS`` draws of the training set. Columns: held-out accuracy (mean and
spread), training time, trainable parameters.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from models.catalog import Catalog
from models.checkpoint import save_checkpoint
from models.finetune.datasets import builtin, held_out
from models.finetune.loop import Hyper, accuracy, fit
from models.finetune.transfer import MODES, Base
from models.images import to_pil

PER_CLASS = 20
SEEDS = (0, 1, 2)
HYPER = {"epochs": 30, "batch_size": 16, "learning_rate": 1e-3, "backbone_lr_factor": 0.1,
         "augment": True, "val_share": 0.0}
TASKS = [  # (title, base, dataset)
    ("shapes → new classes", "resnet18-shapes", "shapes-new"),
    ("shapes → outlines", "resnet18-shapes", "shapes-outline"),
    ("digits 0–4 → 5–9", "lenet5-digits-0-4", "digits-5-9"),
]


def digits_base(folder: Path, seed: int = 0) -> Base:
    """A LeNet-5 trained on the digits 0–4 only (the base of the digits task)."""
    data = builtin("digits-0-4", per_class=None, seed=seed)
    base = Base("lenet5-digits-0-4", "lenet5", "lenet5",
                {"in_channels": 1, "activation": "relu", "pooling": "max", "num_classes": 5},
                {"channels": 1, "height": 32, "width": 32})
    result = fit(base, data.labels, data.images, data.targets,
                 Hyper(mode="scratch", epochs=40, batch_size=64, learning_rate=2e-3,
                       val_share=0.0, seed=seed))
    _, x, y = held_out("digits-0-4", per_class=None)
    top1 = accuracy(result.model, base.tensors([to_pil(t) for t in x]), y)
    weights = save_checkpoint(folder / "lenet5-digits-0-4.safetensors", result.model,
                              {**result.sidecar, "metrics": {"top1": top1}})
    base.weights = weights
    base.config = dict(result.sidecar["config"])
    return base


def _row(base: Base, dataset: str, mode: str, x_eval: torch.Tensor, y_eval: torch.Tensor
         ) -> dict[str, Any]:
    accs, secs, trainable = [], [], 0
    for seed in SEEDS:
        data = builtin(dataset, PER_CLASS, seed=seed)
        t0 = time.perf_counter()
        result = fit(base, data.labels, data.images, data.targets,
                     Hyper(mode=mode, seed=seed, **HYPER))  # type: ignore[arg-type]
        secs.append(time.perf_counter() - t0)
        accs.append(accuracy(result.model, x_eval, y_eval))
        trainable = result.metrics["trainable_parameters"]
    return {"mode": mode, "accuracy": statistics.mean(accs), "accuracy_sd": statistics.stdev(accs),
            "accuracies": accs, "train_seconds": statistics.mean(secs), "trainable": trainable}


def run(out_json: Path | None = None, work: Path = Path("bench-out/transfer")) -> dict[str, Any]:
    """Every task and mode; prints the table (markdown) and returns the figures."""
    work.mkdir(parents=True, exist_ok=True)
    catalog = Catalog.load()
    digits = digits_base(work)
    tasks = []
    for title, base_name, dataset in TASKS:
        base = digits if base_name == digits.name else Base.from_entry(catalog.get(base_name))
        labels, x, y = held_out(dataset, PER_CLASS)
        x_eval = base.tensors([to_pil(t) for t in x])
        rows = [_row(base, dataset, mode, x_eval, y) for mode in MODES]
        tasks.append({"task": title, "base": base_name, "dataset": dataset,
                      "train_images": PER_CLASS * len(labels), "held_out": len(y), "rows": rows})
        print(table([tasks[-1]]), flush=True)
    result = {"tasks": tasks, "per_class": PER_CLASS, "seeds": list(SEEDS), "hyper": HYPER,
              "torch_threads": torch.get_num_threads(), "machine": platform.processor()
              or platform.machine(), "digits_base": asdict(digits) | {"weights": str(digits.weights)}}
    if out_json is not None:
        out_json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def table(tasks: list[dict[str, Any]]) -> str:
    """The figures as a markdown table, one row per task and mode."""
    lines = ["| task | mode | held-out accuracy | training time | trainable parameters |",
             "|---|---|---|---|---|"]
    for t in tasks:
        for r in t["rows"]:
            lines.append(f"| {t['task']} ({t['train_images']} train / {t['held_out']} held out) "
                         f"| `{r['mode']}` | {r['accuracy']:.3f} ± {r['accuracy_sd']:.3f} "
                         f"| {r['train_seconds']:.1f} s | {r['trainable']:,} |")
    return "\n".join(lines)
