"""The trainers and the benchmarks import in one direction: benchmarks may use trainers'
sampling helpers, trainers never import a benchmark (they share the judge instead)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_trainers_import_no_benchmark() -> None:
    modules = [f"models.training.{p.stem}" for p in (ROOT / "models" / "training").glob("*.py")
               if p.stem != "__init__"]
    code = (f"import importlib, json, sys\nfor m in {sorted(modules)!r}:\n"
            "    importlib.import_module(m)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('models.benchmarks'))))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
