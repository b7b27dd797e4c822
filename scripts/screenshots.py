"""Screenshots of the web studio, one per job kind and one of a running job, under
docs/studio/: the browser tests run with CONVOY_STUDIO_SHOTS set, so each picture is the
page a passing test saw (a real API and worker, Debian's Chromium, no network).

    python scripts/screenshots.py [--out docs/studio]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "studio")
    args = parser.parse_args()
    env = {**os.environ, "CONVOY_STUDIO_SHOTS": str(args.out.resolve()), "CI": "true"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "tests/service/test_studio_browser.py", "tests/service/test_studio_finetune.py"]
    done = subprocess.run(command, cwd=ROOT, env=env, check=False)
    if done.returncode == 0:
        print("\n".join(str(p) for p in sorted(args.out.glob("studio-*.png"))))
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
