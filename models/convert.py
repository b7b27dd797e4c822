"""Convert a trusted torchvision ``.pth`` state dict into safetensors, the only format served.

    python -m models.convert resnet50-0676ba61.pth weights/resnet50.safetensors

The file is read with ``torch.load(weights_only=True)``, whose restricted unpickler builds
tensors and plain containers only and refuses any other object, so nothing a pickle
carries can run. The result must be a flat mapping of names to tensors (a state dict);
anything else is refused with a ``ValueError``.
"""

from __future__ import annotations

import argparse
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file


def convert_pth(src: Path | str, dst: Path | str) -> Path:
    """Write the state dict in ``src`` (.pth/.pt) to ``dst`` (.safetensors); return ``dst``."""
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"the output must be a .safetensors file, got {dst.name}")
    try:
        state = torch.load(src, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        # weights_only refuses any global outside tensors and plain containers.
        raise ValueError(f"{src.name} holds more than tensors and was refused: {exc}") from exc
    if not isinstance(state, Mapping):
        # A bad file rather than a bad argument: ValueError, like every refusal here.
        raise ValueError(f"{src.name} holds a {type(state).__name__}, not a state dict")  # noqa: TRY004
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(
            f"{src.name} is not a flat mapping of names to tensors; offending keys: {bad[:5]}"
        )
    if not state:
        raise ValueError(f"{src.name} holds an empty state dict")
    # clone: safetensors refuses tensors that share storage (tied or sliced weights).
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dst))
    return dst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", type=Path, help="a torchvision .pth state dict you trust")
    parser.add_argument("dst", type=Path, help="the .safetensors file to write")
    args = parser.parse_args(argv)
    out = convert_pth(args.src, args.dst)
    print(f"wrote {out}")  # the command's one line of output


if __name__ == "__main__":
    main()
