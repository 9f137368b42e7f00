"""Calibration on the CPU device: a complete, positive profile that the simulator accepts."""

from __future__ import annotations

import json
import re

import pytest

from conftest import run_cli
from expertcache.simulator.costs import Profile
from expertcache.simulator.placements import MISS_PATHS


def test_calibrate_writes_a_profile_the_simulator_uses(model_dirs, tmp_path):
    out = tmp_path / "here.json"
    result = run_cli(
        "calibrate", "--model", model_dirs("olmoe"), "--device", "cpu", "--gpu-budget", "1GiB", "--threads", "1,2", "--repeats", "2", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    profile = Profile.from_json(out)
    assert profile.thread_counts == [1, 2]
    assert set(profile.one_row_kernel) == {1, 2} and set(profile.one_row_kernel.values()) <= {"onednn", "torch"}
    assert f"1 threads {profile.cpu_expert_ms[1][1]:.2f} ms ({profile.one_row_kernel[1]})" in result.stdout
    assert all(ms > 0 for row in profile.cpu_expert_ms.values() for ms in row.values())
    assert set(profile.gpu_expert_ms) == {1, 8, 64, 512} and min(profile.gpu_expert_ms.values()) > 0
    assert profile.dense_ms[1] > 0 and profile.h2d_gbps > 0
    # olmoe toy: hidden 64, expert intermediate 48, float32: gate_up 96×64 + down 64×48
    assert profile.expert_bytes == (96 * 64 + 64 * 48) * 4
    assert profile.split_min_gpu_share == pytest.approx(64 * 48 / (96 * 64 + 64 * 48))  # down_proj's share: a third
    assert profile.split_launch_ms is not None and profile.split_launch_ms > 0 and "a split expert's host time" in result.stdout
    # from a run copying one expert per layer: at most the whole dense time hides GPU work
    assert 0 <= profile.dense_overlap_ms <= profile.dense_ms[1] and "hidden behind the next layer" in result.stdout
    assert f"computing on the CPU pays {profile.cpu_path_overhead_ms:.3f} ms more" in result.stdout
    # generate's logits processing and stopping check between passes: the toy's steps cost more than its passes
    assert profile.step_overhead_ms > 0 and f"between decode passes {profile.step_overhead_ms:.3f} ms per token" in result.stdout
    # the cache core timed at the budget's slots, for every policy the runtime runs
    assert profile.decision_slots > 0 and set(profile.decision_ms) == {"lru", "fifo", "lfu", "random", "score", "eta", "markov"}
    assert all(ms > 0 for pair in profile.decision_ms.values() for ms in pair)
    assert f"the cache core deciding a layer, {profile.decision_slots} slots" in result.stdout
    # how long it took, against the two minutes: the measuring in the profile, the command's on screen
    assert re.search(r"cores, in \d+ s;", profile.notes) and re.search(r"profile  .*here\.json, \d+ s with loading the model", result.stdout)
    assert profile.notes.endswith("decoding eagerly")  # the CPU has no CUDA graphs
    simulated = run_cli("simulate", "--sets", "2", "--ways", "4", "--profile", str(out), "--threads", "2", "--format", "json")
    assert simulated.returncode == 0, simulated.stderr
    assert json.loads(simulated.stdout)["tokens_per_s"] > 0


def test_a_model_whose_experts_cannot_be_split_gets_no_split_price(model_dirs):
    from expertcache.runtime.calibrate import calibrate
    from expertcache.runtime.loader import load
    from expertcache.simulator.config import CacheConfig

    model = load(model_dirs("gpt_oss"), config=CacheConfig(sets=1, ways=4, policy="lru"), device="cpu")  # stored transposed
    profile = calibrate(model, threads=[1], repeats=1)
    assert profile.split_min_gpu_share == 0.0 and profile.split_launch_ms is None
    # calibration measured the rest on the faster one-row kernel, then gave the runtime its own back
    assert profile.one_row_kernel[1] in ("onednn", "torch") and model.expertcache.one_row_kernel == "onednn"


def test_calibrate_needs_exactly_one_model():
    result = run_cli("calibrate")
    assert result.returncode == 2 and "exactly one of --model and --synthetic" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "{olmoe}", "--device", "cpu", "--gpu-budget", "1MB"], "cannot hold the dense weights"),
        (["--model", "{olmoe}", "--device", "cpu", "--gpu-budget", "lots"], "cannot read 'lots' as a size"),
        (["--synthetic", "olmoe-1b-7b", "--device", "cpu", "--gpu-budget", "1GiB"], "--gpu-budget applies to --model"),
    ],
)
def test_calibrate_refuses_a_budget_before_measuring(model_dirs, tmp_path, args, message):
    out = tmp_path / "p.json"
    result = run_cli("calibrate", *[arg.format(olmoe=model_dirs("olmoe")) for arg in args], "--out", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr, result.stderr
    assert not out.exists() and "measuring" not in result.stderr


def test_calibrate_takes_a_model_that_routes_to_more_than_two_experts(model_dirs, tmp_path):
    # real OLMoE and Qwen3 route each token to 8 experts; calibration used to ask for 2 slots
    import shutil

    model_dir = tmp_path / "top4"
    shutil.copytree(model_dirs("olmoe"), model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["num_experts_per_tok"] = 4
    (model_dir / "config.json").write_text(json.dumps(config))
    result = run_cli("calibrate", "--model", str(model_dir), "--device", "cpu", "--threads", "1", "--repeats", "1", "--enforce-eager",
                     "--out", str(tmp_path / "p.json"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert Profile.from_json(tmp_path / "p.json").expert_bytes == (96 * 64 + 64 * 48) * 4


def test_time_outside_experts_is_measured_with_placements_fixed(model_dirs):
    # once with every access a hit, once with every expert on the CPU: never with misses on the
    # GPU path, whose expert time overlaps the rest (it made "time outside experts" negative);
    # that overlap is timed apart, with one miss per layer copied through a staging slot
    from expertcache.runtime.calibrate import calibrate
    from expertcache.runtime.loader import load
    from expertcache.simulator.config import CacheConfig

    import torch
    from transformers import AutoModelForCausalLM

    model_dir = model_dirs("mixtral")
    model = load(model_dir, config=CacheConfig(sets=1, ways=2, policy="lru"), device="cpu", profile="h100")
    ids = torch.tensor([[5, 17, 42, 7]])
    model.expertcache.begin_request(0)
    model.generate(ids, max_new_tokens=6, do_sample=False)  # the cache holds experts now
    model.expertcache.end_pass()
    stats = model.expertcache.stats
    counted = stats.summary()
    profile = calibrate(model, threads=[1], repeats=1)
    assert model.expertcache.stats is stats and stats.summary() == counted  # calibration's passes are not the run's
    assert stats.misses > 0 and stats.hits > 0 and stats.copies > 0 and stats.decode_tokens == 5
    assert min(profile.dense_ms.values()) > 0 and profile.cpu_path_overhead_ms >= 0 and profile.gpu_launch_ms > 0
    assert profile.dense_ms[64] >= profile.dense_ms[1]
    assert model.expertcache.recorder is None and type(model.expertcache.cache).__name__ == "ExpertCache"
    assert 0 <= profile.dense_overlap_ms <= profile.dense_ms[1]
    assert model.expertcache._miss_path == MISS_PATHS["cache"]
    # calibration left the cache's slots alone: generation still equals plain transformers'
    model.expertcache.begin_request(1)
    after = model.generate(ids, max_new_tokens=12, do_sample=False)
    plain = AutoModelForCausalLM.from_pretrained(model_dir).generate(ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(after, plain)


def test_a_spot_measurement_of_cpu_experts_leaves_the_thread_count_alone(model_dirs):
    # repeated during long benchmark runs, to see the machine's CPU speed drift from the profile
    from expertcache.runtime.calibrate import cpu_expert_ms
    from expertcache.runtime.loader import load
    from expertcache.simulator.config import CacheConfig

    import torch

    model = load(model_dirs("olmoe"), config=CacheConfig(sets=1, ways=2), device="cpu", profile="h100")
    threads = torch.get_num_threads()
    measured = cpu_expert_ms(model, threads=1, token_counts=(1, 8), repeats=3, warm_up_s=0.0, window_s=0.2)
    assert set(measured) == {1, 8} and min(measured.values()) > 0
    assert torch.get_num_threads() == threads
