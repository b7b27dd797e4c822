"""The built-in weights ship in the repository: each file stays small."""

from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "weights"


def test_every_shipped_weights_file_is_under_8_mib() -> None:
    files = sorted(WEIGHTS.glob("*.safetensors"))
    assert files
    big = {f.name: f.stat().st_size for f in files if f.stat().st_size > 8 << 20}
    assert big == {}
