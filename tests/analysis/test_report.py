"""The report: valid figures, a self-contained HTML file, and the analyze command run for real."""

from __future__ import annotations

import json
import re

import matplotlib.image as mpimg
import numpy as np
import pandas as pd

from conftest import run_cli
from expertcache.analysis.curves import hit_rate_curves
from expertcache.analysis.report import analyze
from expertcache.simulator.policies import POLICIES
from expertcache.traces.io import read_trace, sample_trace_path
from expertcache.traces.synthetic import synthetic_trace


def _check_figure(png, svg):
    pixels = mpimg.imread(png)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0).shape[0] > 20, "an image of almost one colour"
    assert "<svg" in svg.read_text()[:2000]


def _check_self_contained(report):
    text = report.read_text()
    assert "http://" not in text and "https://" not in text and "<link" not in text and "@import" not in text
    for reference in re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", text):
        assert reference.startswith(("data:", "#")), reference


def test_two_traces_side_by_side(tmp_path):
    traces = {
        "sample": read_trace(sample_trace_path()),
        "synthetic": synthetic_trace(40, num_layers=8, num_experts=8, top_k=2, requests=2, seed=3),
    }
    report = analyze(traces, tmp_path, capacities=[2, 16, 40, 64])
    numbers = json.loads((tmp_path / "reuse.json").read_text())
    assert set(numbers) == {"sample", "synthetic"}
    for stem in ("popularity", "reuse_per_layer", "reuse_distance", "hit_rate_vs_capacity"):
        _check_figure(tmp_path / f"{stem}.png", tmp_path / f"{stem}.svg")
    _check_self_contained(report)
    text = report.read_text()
    assert text.count("data:image/png;base64,") == 4
    assert "sample" in text and "synthetic" in text and "above chance" in text


def test_analyze_command_with_sweep_and_timing(tmp_path, model_dirs):
    sweep = run_cli("sweep", "--slots", "8", "--executor", "serial", "--out", str(tmp_path / "best.json"),
                    "--results", str(tmp_path / "sweep.csv"))  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr
    record = run_cli("record", "--model", model_dirs("mixtral"), "--prompt", "The cache", "--max-tokens", "5",
                     "--device", "cpu", "--hide-response", "--trace", str(tmp_path / "run.parquet"))  # fmt: skip
    assert record.returncode == 0, record.stderr
    out = tmp_path / "report"
    result = run_cli("analyze", str(tmp_path / "run.parquet"), "--out", str(out), "--sweep", str(tmp_path / "sweep.csv"),
                     "--config", str(tmp_path / "best.json"), "--timing", str(tmp_path / "run.timing.parquet"), "--points", "4")  # fmt: skip
    assert result.returncode == 0, result.stderr
    for stem in ("sweep", "time_breakdown", "layer_kinds"):
        _check_figure(out / f"{stem}.png", out / f"{stem}.svg")
    _check_self_contained(out / "report.html")
    assert "Chosen:" in (out / "report.html").read_text()
    assert 'alt="decode layers by kind, measured against priced"' in (out / "report.html").read_text()
    assert pd.read_csv(tmp_path / "sweep.csv").tokens_per_s.gt(0).all()


def test_analyze_bad_input_is_one_line(tmp_path):
    result = run_cli("analyze", str(tmp_path / "none.parquet"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "no such trace file" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    result = run_cli("analyze", "--out", str(tmp_path / "o"), "--sweep", str(tmp_path / "x.csv"))
    assert result.returncode == 2 and "not the results of" in result.stderr


def test_hit_rate_curves_cover_every_policy_by_default():
    curves = hit_rate_curves(read_trace(sample_trace_path()), capacities=[2, 8])
    assert list(curves) == list(POLICIES)
    assert all([slots for slots, _ in points] == [2, 8] for points in curves.values())
