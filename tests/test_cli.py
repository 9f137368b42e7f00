"""The command line, run for real in a subprocess, as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from expertcache.simulator.config import CacheConfig
from expertcache.simulator.costs import load_profile
from expertcache.simulator.engine import ReplayInput, simulate
from expertcache.simulator.geometry import Geometry
from expertcache.simulator.policies import POLICIES
from expertcache.traces.io import read_trace


def test_policies_lists_every_name_that_policy_accepts():
    result = run_cli("policies")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == list(POLICIES)


def test_simulate_json_matches_the_python_api(small_trace):
    result = run_cli("simulate", "--trace", str(small_trace), "--sets", "2", "--ways", "1", "--policy", "lfu", "--format", "json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    expected = simulate(ReplayInput.from_trace(read_trace(small_trace)), Geometry(2, 1), "lfu", load_profile("h100"), 16)
    for key in ("hits", "misses", "hit_rate", "tokens_per_s", "sets", "ways", "policy"):
        assert printed[key] == pytest.approx(expected.summary()[key]) if isinstance(printed[key], float) else printed[key] == expected.summary()[key]
    assert len(printed["layer_hit_rate"]) == 2


def test_sweep_writes_the_best_config_and_every_result(small_trace, tmp_path):
    out, results = tmp_path / "best.json", tmp_path / "all.parquet"
    result = run_cli("sweep", "--trace", str(small_trace), "--slots", "4", "--executor", "serial",
                     "--out", str(out), "--results", str(results))  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = CacheConfig.from_json(out)
    assert config.slots <= 4 and config.policy != "belady"
    table = pq.read_table(results).to_pandas()
    assert len(table) == 4 * 8 * len(load_profile("h100").thread_counts)  # geometries × policies × thread counts
    assert "rank" in result.stdout and f"best: {config.sets} sets x {config.ways} ways" in result.stdout


def test_sweep_tries_at_most_set_counts_of_the_geometries(small_trace, tmp_path):
    results = tmp_path / "all.csv"
    result = run_cli("sweep", "--trace", str(small_trace), "--slots", "4", "--set-counts", "2", "--policies", "lru",
                     "--threads", "16", "--executor", "serial", "--results", str(results), "--out", str(tmp_path / "best.json"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(pd.read_csv(results).sets) == [1, 4]  # the fully associative cache and the direct-mapped one


def test_sweep_makes_the_folders_it_writes_into(small_trace, tmp_path):
    best, results = tmp_path / "new" / "best.json", tmp_path / "other" / "deeper" / "all.parquet"
    result = run_cli("sweep", "--trace", str(small_trace), "--slots", "4", "--out", str(best), "--results", str(results))
    assert result.returncode == 0, result.stderr
    assert json.loads(best.read_text())["sets"] >= 1 and len(pd.read_parquet(results)) > 0


def test_sweep_with_no_arguments_runs_on_the_packaged_sample(tmp_path):
    result = run_cli("sweep", "--executor", "serial", "--max-sets", "4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert CacheConfig.from_json(tmp_path / "best-config.json").slots > 0


def test_trace_info_and_validate(small_trace):
    info = run_cli("trace", "info", str(small_trace))
    assert info.returncode == 0 and "4 experts, top-1" in info.stdout
    ok = run_cli("trace", "validate", str(small_trace))
    assert ok.returncode == 0 and "ok (16 accesses)" in ok.stdout


def test_trace_synthesize_writes_routing_of_a_shape_with_the_locality_asked_for(tmp_path):
    from expertcache.analysis.reuse import reuse_numbers
    from expertcache.cli import FULL_SHAPES as NAMED_IN_THE_CLI
    from expertcache.runtime.synthetic import FULL_SHAPES

    assert NAMED_IN_THE_CLI == list(FULL_SHAPES)
    result = run_cli("trace", "synthesize", "--shape", "phi-3.5-moe", "--tokens", "40", "--out", str(tmp_path / "phi.parquet"))
    assert result.returncode == 0, result.stderr
    phi = read_trace(tmp_path / "phi.parquet")
    assert (phi.meta.num_layers, phi.meta.num_experts, phi.meta.top_k, phi.meta.expert_bytes) == (32, 16, 2, 3 * 4096 * 6400 * 2)
    assert len(phi.frame) == 2 * 40 * 32 * 2 and set(phi.frame.phase) == {"decode"}
    reuse = {}
    for stickiness in (0.0, 0.6):
        path = tmp_path / f"s{stickiness}.parquet"
        assert run_cli("trace", "synthesize", "--stickiness", str(stickiness), "--tokens", "40", "--out", str(path)).returncode == 0
        reuse[stickiness] = reuse_numbers(read_trace(path))["consecutive_token"]["fraction"]
    assert reuse[0.6] > reuse[0.0] + 0.2  # stickier routing reuses more of the previous token's experts


def _bad_trace(tmp_path):
    table = pa.table({"request": pa.array([0], pa.int32())})
    pq.write_table(table, tmp_path / "schema.parquet")
    return tmp_path / "schema.parquet"


@pytest.mark.parametrize(
    "args, message",
    [
        (["simulate", "--trace", "{missing}", "--sets", "1", "--ways", "2"], "no such trace file"),
        (["simulate", "--trace", "{text}", "--sets", "1", "--ways", "2"], "not a readable Parquet file"),
        (["trace", "validate", "{schema}"], "no 'expertcache' metadata"),
        (["simulate", "--trace", "{trace}", "--sets", "1", "--ways", "2", "--policy", "mru"], "unknown policy 'mru'"),
        (["simulate", "--trace", "{trace}", "--sets", "0", "--ways", "2"], "at least one set"),
        (["sweep", "--trace", "{trace}", "--budget", "100KB"], "smaller than one expert"),
        (["sweep", "--trace", "{trace}", "--budget", "lots"], "cannot read 'lots' as a size"),
        (["simulate", "--trace", "{trace}", "--sets", "1", "--ways", "2", "--profile", "nowhere.json"], "no profile"),
        (["simulate", "--trace", "{trace}", "--sets", "1", "--ways", "2", "--threads", "3"], "no CPU timings for 3 threads"),
        (["trace", "synthesize", "--stickiness", "1.5", "--out", "{missing}"], "Invalid value for '--stickiness': 1.5 is not in the range"),
        (["trace", "synthesize", "--tokens", "0", "--out", "{missing}"], "Invalid value for '--tokens': 0 is not in the range x>=1"),
        (["simulate", "--trace", "{trace}", "--sets", "1", "--ways", "2", "--threads", "0"], "Invalid value for '--threads'"),
        (["sweep", "--trace", "{trace}", "--threads", "1,x"], "'1,x' is not a comma-separated list of thread counts"),
        (["sweep", "--trace", "{trace}", "--threads", "2,0"], "thread counts must be at least 1"),
        (["sweep", "--trace", "{trace}", "--threads", "3,15,7"], "no CPU timings for 3, 7 threads; it has [15, 16]"),
        (["simulate", "--trace", "{trace}", "--sets", "1", "--ways", "2", "--bogus"], "No such option '--bogus'. (see "),
        (["bogus"], "No such command 'bogus'"),
        # where results go is checked before the sweep runs, not after
        (["sweep", "--trace", "{trace}", "--results", "{missing}.txt"], "write a .csv or .parquet file"),
        (["sweep", "--trace", "{trace}", "--results", "{text}/all.csv"], "notes.txt is a file, not a folder"),
        (["analyze", "{trace}", "--out", "{text}/report"], "notes.txt/report: Not a directory"),
        (["trace", "synthesize", "--experts", "2", "--top-k", "3", "--out", "{missing}"], "top_k=3 must be between 1 and num_experts=2"),
        # refused at once: Ray itself retried a refused address on localhost for over ten minutes
        (["sweep", "--trace", "{trace}", "--executor", "ray", "--address", "127.0.0.1:1"], "cannot reach a Ray cluster at 127.0.0.1:1"),
        (["sweep", "--trace", "{trace}", "--executor", "ray", "--address", "head-node"], "not a Ray cluster address"),
        (["sweep", "--trace", "{trace}", "--address", "127.0.0.1:6379"], "give it with --executor ray"),
        (["run", "--model", "{missing}", "--prompt", "x", "--device", "tpu"], "'tpu' is not a device expertcache runs on"),
        (["bench", "--synthetic", "olmoe-1b-7b", "--budget", "4GiB", "--device", "cpu:1"], "'cpu:1' is not a device"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_status_2(small_trace, tmp_path, args, message):
    (tmp_path / "notes.txt").write_text("not parquet")
    paths = {"missing": tmp_path / "absent.parquet", "text": tmp_path / "notes.txt", "schema": _bad_trace(tmp_path), "trace": small_trace}
    result = run_cli(*[a.format(**paths) for a in args])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.parametrize(
    "config_text, message",
    [('{"model_type": "not-a-model"}', "does not recognize this architecture"), ("{broken", "not a valid JSON file")],
)
@pytest.mark.parametrize("command", [["run", "--prompt", "hi"], ["bench", "--budget", "4GiB"], ["calibrate", "--out", "{out}"]])
def test_a_model_directory_transformers_cannot_read_is_refused_in_one_line(tmp_path, command, config_text, message):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(config_text)
    args = [a.format(out=tmp_path / "p.json") for a in command]
    result = run_cli(*args, "--model", str(tmp_path / "model"), "--device", "cpu")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot read its config.json" in lines[0] and message in lines[0], result.stderr


def test_experts_beyond_the_machines_host_memory_are_refused_before_any_is_allocated(tmp_path):
    # 2,000 Mixtral-8x7B layers hold 5.6 TB of experts: more than any machine this runs on has
    result = run_cli("calibrate", "--synthetic", "mixtral-8x7b", "--layers", "2000", "--device", "cpu", "--out", str(tmp_path / "p.json"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "the experts of 2000 mixtral-8x7b layers need 5250.0 GiB of host memory" in lines[0], result.stderr
    assert not (tmp_path / "p.json").exists()


def test_fewer_slots_than_top_k_is_refused(tmp_path):
    from conftest import decode_rows, tiny_meta, write_trace

    trace = write_trace(tmp_path / "k2.parquet", tiny_meta(top_k=2), decode_rows([[[0, 1], [2, 3]]]))
    result = run_cli("simulate", "--trace", str(trace), "--sets", "1", "--ways", "1")
    assert result.returncode == 2 and "fewer than top_k = 2" in result.stderr


@pytest.mark.parametrize("command, policy, expected", [("calibrate", None, "ACTIVE"), ("bench", None, "ACTIVE"),
                                                       ("sweep", None, "None"), ("run", "PASSIVE", "PASSIVE")])  # fmt: skip
def test_commands_that_run_a_model_keep_cpu_threads_spinning(command, policy, expected):
    """Set before torch loads OpenMP (a user's own choice kept); commands without a model leave it."""
    code = f"import os; from expertcache.cli import main; main([{command!r}, '--help'], standalone_mode=False); print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.splitlines()[-1] == expected
