"""Recording: the runtime's hit/miss sequence equals the simulator's replay of its own trace;
a killed recording reads back; the CLI commands run for real."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from expertcache.runtime.generate import generate_prompts
from expertcache.runtime.kv import CACHE_ARGUMENT
from expertcache.runtime.loader import load
from expertcache.runtime.stats import LAYER_KINDS
from expertcache.runtime.record import Recorder, sibling
from expertcache.simulator.config import CacheConfig
from expertcache.simulator.costs import load_profile
from expertcache.simulator.engine import ReplayInput, simulate
from expertcache.traces.io import read_trace
from test_equality import SPLIT

PROMPTS = ["The cache keeps the experts", "def add(a, b):", "Natalia sold clips"]
ORDER = ["request", "step", "layer", "position", "rank"]


@pytest.mark.parametrize("policy, sets, ways", [("lru", 3, 2), ("fifo", 1, 6), ("lfu", 2, 3), ("random", 6, 1), ("eta", 2, 3), ("markov", 1, 6), ("score", 3, 2)])
def test_runtime_and_simulator_make_the_same_decisions(model_dirs, tmp_path, policy, sets, ways):
    model_dir = model_dirs("qwen3_moe")
    config = CacheConfig(sets=sets, ways=ways, policy=policy, seed=5)
    model = load(model_dir, config=config, device="cpu")
    model.expertcache.recorder = Recorder(tmp_path / "run.parquet", model.expertcache, "tiny-qwen3")
    generate_prompts(model, AutoTokenizer.from_pretrained(model_dir), PROMPTS, max_new_tokens=10, stream=False)
    model.expertcache.recorder.close()

    trace = read_trace(tmp_path / "run.parquet")
    assert trace.meta.runtime["policy"] == policy and trace.meta.top_k == 2
    assert set(trace.frame.phase) == {"prefill", "decode"} and trace.frame.request.nunique() == 3
    replay = ReplayInput.from_trace(trace)
    simulated = simulate(replay, config.geometry, policy, load_profile("h100"), 16, seed=config.seed, keep_outcome=True)

    runtime = pd.read_parquet(sibling(tmp_path / "run.parquet", "access")).sort_values(ORDER, kind="stable")
    ordered = trace.in_execution_order()
    assert ordered[["request", "position", "layer", "rank"]].to_numpy().tolist() == runtime[["request", "position", "layer", "rank"]].to_numpy().tolist()
    assert np.array_equal(simulated.outcome == 1, runtime.hit.to_numpy())
    assert np.array_equal(simulated.outcome == -1, runtime.slot.to_numpy() < 0)
    assert simulated.hits == model.expertcache.stats.hits > 0


def test_timing_sibling_has_a_row_per_pass_and_layer(model_dirs, tmp_path):
    model_dir = model_dirs("mixtral")
    model = load(model_dir, config=CacheConfig(sets=2, ways=2), device="cpu")
    model.expertcache.recorder = Recorder(tmp_path / "t.parquet", model.expertcache, "tiny")
    generate_prompts(model, AutoTokenizer.from_pretrained(model_dir), PROMPTS[:1], max_new_tokens=5, stream=False)
    model.expertcache.recorder.close()
    timing = pd.read_parquet(sibling(tmp_path / "t.parquet", "timing"))
    assert len(timing) == 5 * 3  # 1 prefill + 4 decode passes, 3 layers
    assert (timing.pass_wall_s > 0).all() and (timing.cpu_s >= 0).all()
    assert (timing.hits + timing.misses).tolist()[3:] == [2] * 12


def test_each_decode_layer_is_timed_against_its_plan_by_how_its_misses_ran(model_dirs, tmp_path):
    model_dir = model_dirs("mixtral")
    model = load(model_dir, config=CacheConfig(sets=1, ways=2, policy="eta"), device="cpu", profile=SPLIT)
    runtime = model.expertcache
    runtime.recorder = Recorder(tmp_path / "k.parquet", runtime, "tiny")
    generate_prompts(model, AutoTokenizer.from_pretrained(model_dir), PROMPTS[:2], max_new_tokens=6, stream=False)
    runtime.recorder.close()
    timing = pd.read_parquet(sibling(tmp_path / "k.parquet", "timing"))
    assert set(timing.kind) <= set(LAYER_KINDS) and {"hybrid", "split"} <= set(timing.kind)
    assert (timing.kind == "split").sum() == runtime.stats.split  # a split layer splits one miss
    assert (timing.kind == "hits").eq(timing.misses == 0).all()
    # every MoE layer but a pass's last is timed, up to the next one's routing, and priced at least its dense time
    last = timing.layer == timing.layer.max()
    assert timing.wall_s[last].isna().all() and timing.planned_s[last].isna().all()
    assert (timing.wall_s[~last] > 0).all() and (timing.planned_s[~last] >= SPLIT.dense_ms[1] / 1e3).all()
    assert (timing.host_s > 0).all() and (timing.host_s[~last] < timing.wall_s[~last]).all()
    assert (timing.output_queue_s >= 0).all() and (timing.cpu_s[timing.kind.isin(["cpu", "hybrid", "split"])] > 0).all()
    # the rule's price of the CPU work sits beside it, and each split miss's GPU share
    on_cpu = timing.kind.isin(["cpu", "hybrid", "split"])
    assert (timing.cpu_priced_s[on_cpu] > 0).all() and (timing.cpu_priced_s[~on_cpu] == 0).all()
    split = timing.kind == "split"
    assert timing.split_share[split].between(SPLIT.split_min_gpu_share, 1, inclusive="left").all()
    assert timing.split_share[~split].isna().all()
    # the counters hold the decode layers' sums by kind
    decode = timing[(timing.phase == "decode") & ~last]
    by_kind = runtime.stats.summary()["layers_by_kind"]
    assert {kind: row["layers"] for kind, row in by_kind.items()} == decode.kind.value_counts().to_dict()
    for kind, row in by_kind.items():
        assert row["wall_s"] == pytest.approx(decode.wall_s[decode.kind == kind].sum())
        assert row["planned_s"] == pytest.approx(decode.planned_s[decode.kind == kind].sum())
        assert row["host_s"] == pytest.approx(decode.host_s[decode.kind == kind].sum())
    assert sum(row["wall_s"] for row in by_kind.values()) < runtime.stats.decode_s


def _cli(*args):
    return [sys.executable, "-m", "expertcache.cli", *args]


def test_record_killed_with_sigkill_leaves_a_readable_trace(model_dirs, tmp_path):
    model_dir = model_dirs("olmoe")
    trace = tmp_path / "killed.parquet"
    process = subprocess.Popen(
        _cli("record", "--model", model_dir, "--prompt", "The cache keeps", "--max-tokens", "400", "--device", "cpu",
             "--sets", "2", "--ways", "2", "--hide-response", "--trace", str(trace)),  # fmt: skip
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    partial = trace.with_name(trace.name + ".partial")
    deadline = time.time() + 120
    while time.time() < deadline and (not partial.exists() or partial.stat().st_size < 20_000):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    recovered = read_trace(trace)
    assert len(recovered.frame) > 100
    info = subprocess.run(_cli("trace", "info", str(trace)), capture_output=True, text=True)
    assert info.returncode == 0 and "decode" in info.stdout


def test_run_and_record_commands(model_dirs, tmp_path):
    model_dir = model_dirs("phimoe")
    CacheConfig(sets=2, ways=3, policy="lfu").to_json(tmp_path / "best.json")
    run = subprocess.run(_cli("run", "--model", model_dir, "--prompt", "def add(a, b):", "--max-tokens", "6",
                              "--config", str(tmp_path / "best.json"), "--device", "cpu"), capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "2 sets x 3 ways, lfu" in run.stdout and "tokens/s" in run.stdout and "hit rate" in run.stdout
    assert "device cpu, decode eager" in run.stdout  # CUDA graphs need a GPU
    assert re.search(r"misses   \d+ experts computed on the GPU after a copy", run.stdout)
    assert re.search(r"layers   decode layers by how their misses ran, count: ms measured / priced \(host's part\): \w+ \d+: \d+\.\d\d / \d+\.\d\d \(host \d+\.\d\d\)", run.stdout)
    (tmp_path / "prompts.txt").write_text("first prompt\n\nsecond prompt\nthird prompt\n")
    record = subprocess.run(_cli("record", "--model", model_dir, "--prompt-file", str(tmp_path / "prompts.txt"), "--n-prompts", "2",
                                 "--max-tokens", "4", "--device", "cpu", "--hide-response", "--enforce-eager", "--trace", str(tmp_path / "r.parquet")),
                            capture_output=True, text=True)  # fmt: skip
    assert record.returncode == 0, record.stderr
    assert read_trace(tmp_path / "r.parquet").frame.request.nunique() == 2


@pytest.mark.parametrize(
    "budget, message",
    [("1MB", "cannot hold the dense weights"), ("300KB", "cannot hold the dense weights")],
)
def test_a_budget_too_small_is_refused_before_loading(model_dirs, budget, message):
    from expertcache.errors import ConfigError
    from expertcache.units import parse_bytes

    with pytest.raises(ConfigError, match=message):
        load(model_dirs("mixtral"), device="cpu", gpu_budget=parse_bytes(budget), max_tokens=64)


def test_fewer_slots_than_top_k_is_refused(model_dirs):
    from expertcache.errors import ConfigError
    from expertcache.runtime.loader import plan_memory

    config = AutoConfig.from_pretrained(model_dirs("mixtral"))
    plan = plan_memory(config, 2**40, 64, torch.float32)
    # the reserve is 4 % of the budget + 256 MiB; leave room for one and a half experts
    budget = int((plan.dense_bytes + plan.kv_bytes + plan.staging_bytes + 256 * 2**20 + 1.5 * plan.expert_bytes) / 0.96)
    with pytest.raises(ConfigError, match="room for 1 expert slots .* fewer than top_k = 2"):
        load(model_dirs("mixtral"), device="cpu", gpu_budget=budget, max_tokens=64)


def test_experts_beyond_the_machines_host_memory_are_refused_before_loading(tmp_path):
    from expertcache.errors import ConfigError
    from expertcache.runtime.synthetic import full_size_config

    # a config alone, no weights: 2,000 Mixtral-8x7B layers hold terabytes of experts
    full_size_config("mixtral-8x7b", 2000).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"the 16000 routed experts of .* need [0-9.]+ GiB of host memory; this machine has"):
        load(tmp_path, device="cpu", max_tokens=64)


def test_a_policy_alone_sets_the_default_geometrys_policy(model_dirs):
    result = subprocess.run(_cli("run", "--model", model_dirs("mixtral"), "--prompt", "x", "--device", "cpu", "--max-tokens", "2",
                                 "--policy", "fifo", "--hide-response"), capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.search(r"cache +\d+ sets x \d+ ways, fifo,", result.stdout), result.stdout


def test_run_reports_bad_input_in_one_line(model_dirs, tmp_path):
    belady, broken = tmp_path / "belady.json", tmp_path / "broken.json"
    CacheConfig(sets=1, ways=4, policy="belady").to_json(belady)
    broken.write_text("{not json")
    cases = [
        (["--model", str(tmp_path / "nowhere"), "--prompt", "x"], "not a model directory"),
        (["--model", model_dirs("mixtral"), "--prompt", "x", "--device", "cpu", "--gpu-budget", "1MB"], "cannot hold the dense weights"),
        (["--model", model_dirs("mixtral"), "--device", "cpu"], "exactly one of --prompt and --prompt-file"),
        (["--model", model_dirs("mixtral"), "--prompt", "x", "--device", "cpu", "--sets", "1", "--ways", "1"], "fewer than top_k"),
        # refused before the weights load (their progress bar would make a second line)
        (["--model", model_dirs("mixtral"), "--prompt", "x", "--device", "cpu", "--config", str(belady)], "runs only in the simulator"),
        (["--model", model_dirs("mixtral"), "--prompt", "x", "--device", "cpu", "--profile", str(broken)], "not a JSON profile"),
    ]
    for args, message in cases:
        result = subprocess.run(_cli("run", *args), capture_output=True, text=True)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr, result.stderr


def test_a_deferred_recording_writes_what_a_running_one_does(model_dirs, tmp_path):
    """The bench's recordings are written at close (``Recorder(deferred=True)``): the same trace,
    accesses and timing rows as one written pass by pass."""
    model_dir = model_dirs("mixtral")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    files = {}
    for deferred in (False, True):
        model = load(model_dir, config=CacheConfig(sets=2, ways=2, policy="lru"), device="cpu")
        path = tmp_path / f"{deferred}.parquet"
        model.expertcache.recorder = Recorder(path, model.expertcache, "tiny", deferred=deferred)
        generate_prompts(model, tokenizer, PROMPTS[:2], max_new_tokens=6, stream=False)
        if deferred:
            assert not path.exists() and len(model.expertcache.recorder.deferred) > 0  # nothing written yet
        model.expertcache.recorder.close()
        files[deferred] = (read_trace(path).frame, pd.read_parquet(sibling(path, "access")), pd.read_parquet(sibling(path, "timing")))
    (trace, access, timing), (deferred_trace, deferred_access, deferred_timing) = files[False], files[True]
    pd.testing.assert_frame_equal(trace, deferred_trace)
    pd.testing.assert_frame_equal(access, deferred_access)
    untimed = [c for c in timing.columns if not c.endswith("_s")]
    assert len(timing) > 0
    pd.testing.assert_frame_equal(timing[untimed], deferred_timing[untimed])


def test_nothing_between_two_decode_passes_goes_untimed(model_dirs):
    """Closing a decode pass (reading its timings, recording it) holds the host between two
    tokens: the next decode pass starts where the last one ended, so decode time counts it."""
    from expertcache.runtime.kv import empty_cache

    model = load(model_dirs("mixtral"), config=CacheConfig(sets=2, ways=2), device="cpu")
    runtime = model.expertcache
    cache = empty_cache(model, 16)
    with torch.inference_mode():
        runtime.begin_request(0)
        model(torch.tensor([[1, 2, 3, 4]]), **{CACHE_ARGUMENT: cache}, use_cache=True)  # prefill, left open
        model(torch.tensor([[5]]), **{CACHE_ARGUMENT: cache}, use_cache=True)  # the first decode pass
        first_started, prefill_s = runtime._pass_started, runtime.stats.prefill_s
        model(torch.tensor([[6]]), **{CACHE_ARGUMENT: cache}, use_cache=True)  # the second closes the first
    assert runtime.stats.decode_tokens == 1 and prefill_s > 0
    assert runtime._pass_started == pytest.approx(first_started + runtime.stats.decode_s, abs=1e-9)
