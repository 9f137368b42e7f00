"""`expertcache bench` end to end on the CPU device: a tiny model, every system, one subprocess."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from dataclasses import asdict

import pandas as pd
import pytest
import torch
from transformers import AutoConfig

from conftest import run_cli
from expertcache.runtime.bench import dense_drift, dense_in_run
from expertcache.runtime.loader import plan_memory
from expertcache.runtime.stats import LayerTimes
from expertcache.simulator.policies import get_policy


def budget_for_slots(model_dir: str, slots: int, max_tokens: int) -> int:
    """The budget that leaves exactly ``slots`` expert slots (the plan's reserve is 4 % + 256 MiB)."""
    plan = plan_memory(AutoConfig.from_pretrained(model_dir), 2**40, max_tokens, torch.float32)
    fixed = plan.dense_bytes + plan.kv_bytes + plan.staging_bytes + 256 * 2**20
    budget = int((fixed + (slots + 0.5) * plan.expert_bytes) / 0.96)
    assert plan_memory(AutoConfig.from_pretrained(model_dir), budget, max_tokens, torch.float32).slots == slots
    return budget


def test_bench_runs_every_system_and_prices_each_run(model_dirs, tmp_path):
    model_dir = model_dirs("mixtral")  # 3 layers x 8 experts, top-2
    budget = budget_for_slots(model_dir, 9, max_tokens=4 + 3 + 8)
    result = run_cli("bench", "--model", model_dir, "--budget", str(budget), "--device", "cpu", "--requests", "2",
                     "--prompt-tokens", "4", "--new-tokens", "3", "--threads", "1", "--rounds", "2", "--out", str(tmp_path / "b.json"),
                     "--timing-out", str(tmp_path / "layers.parquet"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "expertcache is" in result.stdout and "(9 slots)" in result.stdout and "median of 2 interleaved rounds" in result.stdout
    document = json.loads((tmp_path / "b.json").read_text())
    assert document["complete"] and not (tmp_path / "b.json.partial").exists()
    assert document["setup"]["cuda_graphs"]  # on a GPU; the CPU decodes eagerly whatever it says
    rows = {row["system"]: row for row in document["rows"]}
    assert list(rows) == ["expertcache", "fetch", "static", "cpu", "gpu", "accelerate"]
    accelerate = rows.pop("accelerate")  # timed from outside: no cache, recorded run or prediction
    assert accelerate["decode_tokens_per_s"] > 0 and accelerate["prefill_s"] > 0 and "hit_rate" not in accelerate
    assert "| accelerate |" in result.stdout
    chosen = document["chosen"]
    assert chosen["sets"] * chosen["ways"] <= 9 and not get_policy(chosen["policy"]).offline_only
    assert (rows["expertcache"]["sets"], rows["expertcache"]["ways"]) == (chosen["sets"], chosen["ways"])
    assert rows["cpu"]["hit_rate"] == 0.0 and rows["cpu"]["copies"] == 0
    assert rows["static"]["copies"] == 0 and 0.0 < rows["static"]["hit_rate"] < 1.0  # one of 3 layers fits
    assert rows["gpu"]["hit_rate"] == 1.0 and rows["gpu"]["ways"] == 24
    assert rows["fetch"]["copies"] > 0
    for row in rows.values():
        assert row["decode_tokens_per_s"] > 0 and row["roofline_tokens_per_s"] > 0 and row["desktop_tokens_per_s"] > 0
        assert len(row["decode_tokens_per_s_runs"]) == 2 and row["decode_tokens_per_s"] == min(row["decode_tokens_per_s_runs"])
        assert row["copies_after_last_pass_s"] >= 0.0  # reported beside the decode time it is not part of
        assert row["cpu_expert_ms_after"] > 0  # the CPU speed its roofline is priced at
        assert row["roofline_dense_ms"] is None  # 8 decode layers a round, too few to price its own dense time
    after = [row["cpu_expert_ms_after"] for row in rows.values()]
    calibrated = document["profile"]["cpu_expert_ms"]["1"]["1"]
    assert f"rooflines at the CPU expert time measured after each run, {min(after):.2f}-{max(after):.2f} ms (calibrated {calibrated:.2f} ms" in result.stdout
    assert "round 2 of 2" in result.stderr
    # each round's speed, and expertcache's ratio over each peer in it, beside the row's
    assert re.search(r"\| fetch \| [^|]+ \| [^|]+ \| \d+\.\d\d \(\d+\.\d\d, \d+\.\d\d\) \|", result.stdout)
    assert re.search(r"\| \d+\.\d\d× \(\d+\.\d\d×, \d+\.\d\d×\) \|", result.stdout)
    # beside each peer's predicted speed, the ratio the simulator predicted for expertcache over it
    ours, fetch = rows["expertcache"]["predicted_tokens_per_s"], rows["fetch"]["predicted_tokens_per_s"]
    assert f"| {fetch:.2f} ({ours / fetch:.2f}×) |" in result.stdout and f"| {ours:.2f} (–) |" in result.stdout
    # each system's decode layers, by how their misses ran, against the miss rule's plan
    kinds = {system: row["measured"]["layers_by_kind"] for system, row in rows.items()}
    assert set(kinds["cpu"]) == {"cpu"} and set(kinds["gpu"]) == {"hits"} and "cpu" not in kinds["fetch"]
    assert set(kinds["fetch"]) <= {"hits", "gpu"} and "gpu" in kinds["fetch"]
    timed = 2 * (3 - 1) * 2  # requests x decode passes after the first token x MoE layers before a pass's last
    for system, by_kind in kinds.items():
        assert sum(k["layers"] for k in by_kind.values()) == timed, system
        assert all(k["wall_s"] > k["host_s"] > 0 and k["planned_s"] > 0 for k in by_kind.values())
    assert "| system | hits | gpu | cpu |" in result.stdout and f"| cpu | – | – | {timed}: " in result.stdout
    # every run's layers, kept apart by system and round; the setup, so the runs can be priced again
    layers = pd.read_parquet(tmp_path / "layers.parquet")
    assert set(layers.system) == set(rows) and set(layers["round"]) == {0, 1}
    decode = layers[(layers.phase == "decode") & layers.wall_s.notna()]
    assert len(decode) == 2 * timed * len(rows) and set(decode[decode.system == "cpu"].kind) == {"cpu"}
    assert document["setup"]["new_tokens"] == 3 and document["setup"]["prompt_tokens"] == 4 and document["setup"]["requests"] == 2


def test_a_bench_killed_midway_leaves_the_runs_it_finished(model_dirs, tmp_path):
    model_dir = model_dirs("mixtral")
    budget = budget_for_slots(model_dir, 9, max_tokens=4 + 3 + 8)
    out = tmp_path / "b.json"
    command = [sys.executable, "-m", "expertcache.cli", "bench", "--model", model_dir, "--budget", str(budget), "--device", "cpu",
               "--systems", "expertcache,fetch", "--prompt-tokens", "4", "--new-tokens", "3", "--threads", "1", "--out", str(out),
               "--enforce-eager"]  # fmt: skip
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as bench:
        for line in bench.stderr:  # killed (no cleanup at all) once expertcache's run is done
            if line.startswith("running fetch"):
                bench.kill()
                break
        bench.wait(timeout=60)
    assert bench.returncode == -signal.SIGKILL
    document = json.loads(out.read_text())
    assert not document["complete"] and document["setup"]["cuda_graphs"] is False
    assert [row["system"] for row in document["rows"]] == ["expertcache"]
    assert document["rows"][0]["decode_tokens_per_s"] > 0 and document["chosen"]["policy"]


def test_bench_refuses_an_unknown_system_before_building_anything(model_dirs):
    result = run_cli("bench", "--model", model_dirs("mixtral"), "--budget", "1GiB", "--device", "cpu", "--systems", "expertcache,vllm")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: unknown system 'vllm'; known: expertcache, fetch, static, cpu, gpu, accelerate"


@pytest.mark.parametrize("option", ["--rounds", "--new-tokens", "--prompt-tokens", "--requests", "--threads"])
def test_bench_refuses_a_zero_count_in_one_line(model_dirs, option):
    result = run_cli("bench", "--model", model_dirs("mixtral"), "--budget", "1GiB", "--device", "cpu", option, "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and line.endswith(" bench --help)"), line
    assert line.startswith(f"error: Invalid value for '{option}': 0 is not in the range x>=1."), line


def test_a_runs_roofline_takes_the_dense_time_its_all_hit_layers_paid_when_it_had_enough_of_them():
    def hits(layers: int, wall_s: float, planned_s: float) -> dict[str, dict]:
        return {"hits": asdict(LayerTimes(layers, wall_s, planned_s, 0.0)), "cpu": asdict(LayerTimes(100, 1.0, 1.0, 0.9))}

    # 40 all-hit layers ran 0.3 ms each beyond their price: the dense time was calibration's 1.0 + 0.3
    assert dense_in_run(hits(40, 0.064, 0.052), calibrated_ms=1.0) == pytest.approx(1.3)
    assert dense_in_run(hits(40, 0.028, 0.052), calibrated_ms=1.0) == pytest.approx(0.4)  # faster than priced
    assert dense_in_run(hits(20, 0.064, 0.052), calibrated_ms=1.0) is None  # too few to say
    assert dense_in_run({"cpu": asdict(LayerTimes(100, 1.0, 1.0, 0.9))}, calibrated_ms=1.0) is None  # the all-CPU peer


def test_bench_notes_when_the_all_hit_layers_ran_far_from_their_price():
    def ran(system: str, layers: int, wall_s: float, planned_s: float) -> dict:
        return {"system": system, "measured": {"layers_by_kind": {"hits": asdict(LayerTimes(layers, wall_s, planned_s, 0.0))}}}

    timed_outside = {"system": "accelerate"}  # no layers of its own
    assert dense_drift([ran("expertcache", 40, 0.080, 0.072), ran("static", 40, 0.080, 0.072), timed_outside]) is None  # +11 %
    assert dense_drift([ran("expertcache", 20, 0.2, 0.02)]) is None  # too few layers to say
    assert dense_drift([ran("expertcache", 40, 0.08, 0.0)]) is None  # priced at nothing: no ratio to give
    line = dense_drift([ran("expertcache", 20, 0.036, 0.052), ran("static", 20, 0.036, 0.052), timed_outside])
    assert line is not None and line.startswith("all-hit layers ran 1.80 ms against 2.60 priced (-31%)")
