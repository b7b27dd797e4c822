"""``convoy bench peers`` on a tiny run: every contender at hand is measured at 1 and 64
clients against the same direct baseline, and its service CPU splits into parts that add
up. Structure only: figures on a shared machine are not asserted."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bench.peers import contenders
from bench.peers.contenders import available
from bench.report import BenchOptions


def test_only_importable_peers_run_and_nothing_is_installed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(contenders.importlib.util, "find_spec",
                        lambda name: None if name in ("litserve", "ray") else real(name))
    assert [c.name for c in available()] == ["convoy", "convoy, 2 API processes",
                                             "FastAPI + Celery"]
    assert available(("ray",)) == []
    with pytest.raises(ValueError, match="unknown contenders"):
        available(("tgi",))


@pytest.mark.slow
def test_a_tiny_peers_run_reports_every_contender_against_one_direct_baseline(
        tmp_path: Path) -> None:
    from bench.peers.scenario import peers
    from tests.conftest import redis_db_url

    names = ["convoy"] + (["litserve"] if importlib.util.find_spec("litserve") else [])
    opts = BenchOptions(out=tmp_path, redis_url=redis_db_url(7), scale=0.05)
    result = peers(opts, contenders=",".join(names))

    assert json.loads((tmp_path / "peers.json").read_text())["rows"] == result["rows"]
    assert len(result["direct_runs"]) == 3 * len(names)  # before each level and after
    assert [r["contender"] for r in result["rows"]] == [
        {"convoy": "convoy", "litserve": "LitServe"}[n] for n in names]
    for row in result["rows"]:
        assert set(row["levels"]) == {"1", "64"}
        for level in row["levels"].values():
            assert level["jobs"] >= 4 and 0 < level["p50_s"] <= level["p99_s"]
            assert level["vs_direct"] == level["jobs_per_s"] / result["direct_images_per_s"]
            assert level["cpu_s_per_job"]["api"] > 0 and level["cpu_s_per_job"]["worker"] > 0
        cpu = row["service_cpu_s_per_job"]
        parts = {k: v for k, v in cpu.items() if k != "total"}
        assert cpu["total"] == pytest.approx(sum(parts.values()))
        raw = row["levels"]["64"]["cpu_s_per_job"]
        assert parts["worker"] == pytest.approx(raw["worker"] - result["direct_cpu_s_per_image"])
        assert "client" not in parts and parts["api"] == raw["api"]
    convoy = result["rows"][0]["service_cpu_s_per_job"]
    assert set(convoy) == {"api", "worker", "redis", "total"}
