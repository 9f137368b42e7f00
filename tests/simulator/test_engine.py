"""Timing of the replay engine against hand-computed schedules."""

from __future__ import annotations

import pytest

from conftest import decode_rows, tiny_meta, write_trace
from expertcache.simulator.costs import Profile
from expertcache.simulator.engine import ReplayInput, simulate
from expertcache.simulator.geometry import Geometry
from expertcache.traces.io import read_trace

EXPERT_BYTES = 1_000_000


def profile(copy_ms: float) -> Profile:
    """Round numbers: dense 1 ms, GPU expert 0.1 ms, CPU expert 10 ms, no overhead."""
    return Profile(
        name="hand",
        expert_bytes=EXPERT_BYTES,
        h2d_gbps=EXPERT_BYTES / (copy_ms * 1e-3) / 1e9,
        cpu_expert_ms={4: {1: 10.0}},
        gpu_expert_ms={1: 0.1},
        dense_ms={1: 1.0},
        layer_overhead_ms=0.0,
    )


@pytest.fixture
def three_tokens(tmp_path):
    meta = tiny_meta(num_layers=1, num_experts=2, top_k=1, expert_bytes=EXPERT_BYTES)
    return ReplayInput.from_trace(read_trace(write_trace(tmp_path / "t.parquet", meta, decode_rows([[[0]], [[0]], [[0]]]))))


def test_a_miss_runs_on_the_cpu_while_its_copy_makes_the_next_token_hit(three_tokens):
    result = simulate(three_tokens, Geometry(1, 1), "lru", profile(copy_ms=5.0), threads=4)
    # token 0: dense 1 + CPU 10 (copy done at 6 ms); tokens 1, 2: dense 1 + GPU 0.1
    assert (result.hits, result.misses) == (2, 1)
    assert result.decode_s == pytest.approx((11.0 + 1.1 + 1.1) / 1e3)
    assert result.tokens_per_s == pytest.approx(3 / 13.2e-3)
    assert result.stall_s == pytest.approx(0.0)
    assert result.cpu_s == pytest.approx(10e-3)
    assert result.pcie_busy_s == pytest.approx(5e-3)


def test_a_hit_on_a_copy_still_in_flight_waits_for_it(three_tokens):
    result = simulate(three_tokens, Geometry(1, 1), "lru", profile(copy_ms=20.0), threads=4)
    # token 0 ends at 11 ms with the copy done at 21 ms; token 1 waits 9 ms for it
    assert result.stall_s == pytest.approx(9e-3)
    assert result.decode_s == pytest.approx((11.0 + 10.1 + 1.1) / 1e3)


def test_the_cpu_slows_down_while_a_copy_shares_memory_bandwidth(three_tokens):
    slowed = profile(copy_ms=5.0)
    slowed.cpu_slowdown_during_copy = 1.5
    result = simulate(three_tokens, Geometry(1, 1), "lru", slowed, threads=4)
    assert result.cpu_s == pytest.approx(15e-3)


def test_prefill_sends_a_busy_expert_to_the_gpu_when_copying_is_faster(tmp_path):
    meta = tiny_meta(num_layers=1, num_experts=2, top_k=1, expert_bytes=EXPERT_BYTES)
    prefill = {"request": [0] * 8, "position": list(range(8)), "phase": "prefill", "layer": [0] * 8,
               "rank": [0] * 8, "expert": [1] * 8, "weight": [1.0] * 8}  # fmt: skip
    replay = ReplayInput.from_trace(read_trace(write_trace(tmp_path / "p.parquet", meta, prefill)))
    costs = profile(copy_ms=5.0)
    costs.cpu_expert_ms = {4: {1: 10.0, 8: 40.0}}
    costs.dense_ms = {1: 1.0, 8: 2.0}
    costs.gpu_expert_ms = {1: 0.1, 8: 0.1}
    result = simulate(replay, Geometry(1, 1), "lru", costs, threads=4)
    # CPU would take 40 ms; copy (2 → 7 ms) then GPU 0.1 ms wins
    assert result.prefill_s == pytest.approx(7.1e-3)
    assert result.cpu_s == 0.0
    assert (result.hits, result.misses) == (7, 1)
