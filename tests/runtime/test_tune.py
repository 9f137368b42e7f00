"""`expertcache tune`: record, calibrate and sweep in one command, for real, on a tiny model."""

from __future__ import annotations

from conftest import run_cli
from expertcache.simulator.config import CacheConfig
from expertcache.simulator.costs import Profile
from expertcache.simulator.policies import get_policy
from expertcache.traces.io import read_trace


def test_tune_writes_a_trace_a_profile_and_a_configuration_that_runs(model_dirs, tmp_path):
    model_dir = model_dirs("mixtral")  # 3 layers x 8 experts, top-2: 24 slots on the CPU device
    out = tmp_path / "tuned"
    result = run_cli("tune", "--model", model_dir, "--prompt", "Natalia sold clips to 48 of her friends",
                     "--max-tokens", "6", "--threads", "1,2", "--device", "cpu", "--out-dir", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    trace = read_trace(out / "trace.parquet")
    assert trace.meta.num_experts == 8 and set(trace.frame.phase) == {"prefill", "decode"}
    assert Profile.from_json(out / "profile.json").thread_counts == [1, 2]
    config = CacheConfig.from_json(out / "best-config.json")
    assert config.slots <= 24 and config.threads in (1, 2) and not get_policy(config.policy).offline_only
    assert f"{config.sets} sets x {config.ways} ways" in result.stdout
    # as tune says to run it: the configuration, with the misses placed at the calibrated costs
    assert f"--config {out / 'best-config.json'} --profile {out / 'profile.json'}" in result.stdout

    ran = run_cli("run", "--model", model_dir, "--config", str(out / "best-config.json"), "--profile", str(out / "profile.json"),
                  "--prompt", "x", "--max-tokens", "3", "--device", "cpu", "--hide-response")  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert f"{config.sets} sets x {config.ways} ways, {config.policy}" in ran.stdout
    kernel = Profile.from_json(out / "profile.json").one_row_kernel_at(config.threads)  # the calibrated one, not torch's default
    assert f"{config.threads} CPU threads (one-row experts on {kernel})" in ran.stdout


def test_tune_without_a_prompt_says_so_in_one_line(model_dirs, tmp_path):
    result = run_cli("tune", "--model", model_dirs("mixtral"), "--device", "cpu", "--out-dir", str(tmp_path))
    assert result.returncode == 2 and "give exactly one of --prompt and --prompt-file" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "trace.parquet").exists()
    assert len(result.stderr.strip().splitlines()) == 1
