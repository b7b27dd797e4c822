"""``convoy bench sampler`` on the shipped weights, cut down to a couple of steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.benchmarks import sampler

NEEDED = ("lenet5-digits", "ddpm-digits", "dcgan-digits")


@pytest.mark.skipif(
    not all((sampler.WEIGHTS / f"{n}.safetensors").exists() for n in NEEDED),
    reason="the digit models are not trained",
)
def test_rows_table_and_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(sampler, "ROWS", [("dpmpp", 3), ("euler", 3)])
    try:
        rows = sampler.run(out_json=tmp_path / "sampler.json", per_class=1, edits_limit=4)
    finally:
        torch.set_num_threads(threads)
    assert [(r["model"], r["sampler"], r["steps"]) for r in rows] == [
        ("ddpm-digits", "dpmpp", 3),
        ("ddpm-digits", "euler", 3),
        ("dcgan-digits", "generator", 1),
    ]
    for r in rows:
        assert r["images"] == 10 and 0 <= r["conditional_accuracy"] <= 1
        assert r["frechet_distance"] > 0 and r["images_per_s"] > 0
        assert 0 <= r["noisy_share"] <= 1 and r["roughness_median_vs_real"] > 0
    assert rows[2]["conditional_accuracy"] >= 0.7  # the GAN needs no steps to draw digits
    written = json.loads((tmp_path / "sampler.json").read_text())
    assert written["rows"] == rows and written["per_class"] == 1
    assert [(e["edit"], e["images"]) for e in written["edits"]][:2] == [
        ("inpaint bottom half", 4),
        ("inpaint right half", 4),
    ]
    assert "dcgan-digits" in capsys.readouterr().out
