"""``convoy worker --gpus``: one child per GPU, each seeing only its own device, restarted
when it dies, stopped with the parent — on a fake device list (CONVOY_FAKE_GPUS), with the
child swapped for a tiny script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.fixtures import ROOT
from workers.worker import list_gpus

CHILD = """
import json, os, signal, sys, time
out = sys.argv[1]
def stopped(*_):
    open(os.path.join(out, f"{os.getpid()}.stopped"), "w").close()
    sys.exit(0)
signal.signal(signal.SIGTERM, stopped)
with open(os.path.join(out, f"{os.getpid()}.json"), "w") as f:
    json.dump({"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
               "device": os.environ.get("CONVOY_DEVICE")}, f)
while True:
    time.sleep(0.1)
"""

# The real `convoy worker --gpus all` command line, with only the child command swapped.
PARENT = """
import sys
import workers.worker as w
real = w.spawn_per_gpu
w.spawn_per_gpu = lambda gpus, argv, **kw: real(gpus, [sys.executable, {child!r}, {out!r}],
                                                poll_s=0.1)
from service.cli import app
try:
    app(["worker", "--gpus", "all"])
finally:
    with open({marker!r}, "w") as f:
        f.write("torch" if "torch" in sys.modules else "no torch")
"""


def test_list_gpus_reads_a_list_or_the_fake_count(monkeypatch: pytest.MonkeyPatch) -> None:
    assert list_gpus("0, 2") == ["0", "2"]
    monkeypatch.setenv("CONVOY_FAKE_GPUS", "3")
    assert list_gpus("all") == ["0", "1", "2"]


def test_the_worker_command_hands_each_gpu_the_child_command(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import workers.worker
    from service.cli import app

    seen: dict[str, Any] = {}

    def fake(gpus: list[str], argv: list[str], **_: Any) -> int:
        seen.update(gpus=gpus, argv=argv)
        return 0

    monkeypatch.setattr(workers.worker, "spawn_per_gpu", fake)
    monkeypatch.setenv("CONVOY_FAKE_GPUS", "2")
    result = CliRunner().invoke(app, ["worker", "--gpus", "all", "--queues", "gpu",
                                      "--concurrency", "4"])
    assert result.exit_code == 0, result.output
    assert seen["gpus"] == ["0", "1"]
    assert seen["argv"][1:] == ["-m", "service.cli", "worker", "--queues", "gpu",
                                "--concurrency", "4"]


def _children(out: Path) -> dict[int, dict[str, str]]:
    found = {}
    for path in out.glob("*.json"):
        try:
            found[int(path.stem)] = json.loads(path.read_text())
        except ValueError:
            pass  # being written
    return found


def _wait_for(what: str, ok: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_one_child_per_gpu_restarted_when_killed_and_stopped_with_the_parent(
        tmp_path: Path) -> None:
    out, child = tmp_path / "children", tmp_path / "child.py"
    out.mkdir()
    child.write_text(CHILD)
    marker = tmp_path / "parent-imports.txt"
    program = PARENT.format(child=str(child), out=str(out), marker=str(marker))
    env = {**os.environ, "CONVOY_FAKE_GPUS": "2", "PYTHONPATH": str(ROOT),
           "CONVOY_LOG_LEVEL": "WARNING"}
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(program)], cwd=ROOT, env=env)
    try:
        _wait_for("two children", lambda: len(_children(out)) == 2)
        first = _children(out)
        assert sorted(c["cuda"] for c in first.values()) == ["0", "1"]
        assert {c["device"] for c in first.values()} == {"cuda:0"}  # each sees one GPU as 0

        victim = next(pid for pid, c in first.items() if c["cuda"] == "1")
        os.kill(victim, signal.SIGKILL)
        _wait_for("a restarted child", lambda: len(_children(out)) == 3)
        (new_pid, new), = ((p, c) for p, c in _children(out).items() if p not in first)
        assert new["cuda"] == "1" and new_pid != victim

        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=30) == 0
        live = [pid for pid in _children(out) if pid != victim]
        assert sorted(p.stem for p in out.glob("*.stopped")) == sorted(map(str, live))
        assert marker.read_text() == "no torch"  # CUDA never touched in the parent
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in _children(out):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
