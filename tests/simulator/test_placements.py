"""The compared systems priced by the simulator, and the roofline, against hand-computed schedules."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import decode_rows, tiny_meta, write_trace
from expertcache.simulator.costs import Profile
from expertcache.simulator.engine import HIT, ReplayInput, simulate
from expertcache.simulator.geometry import Geometry
from expertcache.simulator.roofline import roofline
from expertcache.traces.io import Trace, read_trace
from test_engine import profile


@pytest.fixture
def two_layers(tmp_path):
    """Two layers, two experts, top-1; three decode tokens all choosing expert 0."""
    meta = tiny_meta(num_layers=2, num_experts=2, top_k=1, expert_bytes=1_000_000)
    rows = decode_rows([[[0], [0]], [[0], [0]], [[0], [0]]])
    return ReplayInput.from_trace(read_trace(write_trace(tmp_path / "t.parquet", meta, rows)))


def test_static_placement_keeps_the_last_layer_on_the_gpu(two_layers):
    # 2 slots hold one whole layer (2 experts): layer 1's accesses hit, layer 0's run on the CPU
    result = simulate(two_layers, Geometry(1, 2), "lru", profile(copy_ms=5.0), threads=4, placement="static")
    assert result.layer_hits == [0, 3] and result.layer_misses == [3, 0]
    assert result.pcie_busy_s == 0.0
    # per token: layer 0 dense 1 + CPU 10, layer 1 dense 1 + GPU 0.1
    assert result.decode_s == pytest.approx(3 * 12.1e-3)


def test_all_on_cpu_never_hits_nor_copies(two_layers):
    result = simulate(two_layers, Geometry(1, 2), "lru", profile(copy_ms=5.0), threads=4, placement="cpu")
    assert result.hits == 0 and result.pcie_busy_s == 0.0
    assert result.decode_s == pytest.approx(6 * 11e-3)


def test_fetching_computes_a_miss_on_the_gpu_after_its_copy(two_layers):
    result = simulate(two_layers, Geometry(1, 2), "lru", profile(copy_ms=5.0), threads=4, placement="fetch")
    # token 0: each layer dense 1, copy 5 from the end of dense, GPU 0.1 → 6.1 ms; then hits 1.1 ms
    assert result.cpu_s == 0.0 and (result.hits, result.misses) == (4, 2)
    assert result.decode_s == pytest.approx((2 * 6.1 + 4 * 1.1) / 1e3)


def test_roofline_takes_the_faster_of_cpu_and_copy_for_each_miss(two_layers):
    # misses (token 0) cost min(CPU 10, copy 5 + GPU 0.1) = 5.1 ms each; hits 0.1 ms
    lru = simulate(two_layers, Geometry(1, 2), "lru", profile(copy_ms=5.0), threads=4, keep_outcome=True)
    assert (lru.outcome == HIT).sum() == 4
    bound = roofline(two_layers, lru.outcome, profile(copy_ms=5.0), threads=4)
    assert bound.decode_s == pytest.approx((2 * 6.1 + 4 * 1.1) / 1e3)
    # with slow copies the CPU is the faster home for a miss
    slow = roofline(two_layers, lru.outcome, profile(copy_ms=50.0), threads=4)
    assert slow.decode_s == pytest.approx((2 * 11.0 + 4 * 1.1) / 1e3)
    assert bound.tokens_per_s == pytest.approx(3 / bound.decode_s)
    # experts that can be split: f * 5 + 0.1 = (1 - f) * 10 at f = 0.66, 3.4 ms per miss
    shared = roofline(two_layers, lru.outcome, profile(copy_ms=5.0, split_min_gpu_share=1 / 3), threads=4)
    assert shared.decode_s == pytest.approx((2 * 4.4 + 4 * 1.1) / 1e3)
    # GPU work hidden behind the host's next dense work: up to 0.5 ms of each layer's, never below
    # the dense time
    hidden = roofline(two_layers, lru.outcome, profile(copy_ms=5.0, dense_overlap_ms=0.5), threads=4)
    assert hidden.decode_s == pytest.approx((2 * 5.6 + 4 * 1.0) / 1e3)


@settings(max_examples=60, deadline=None)
@given(
    st.data(), st.integers(1, 3), st.integers(2, 6), st.integers(1, 2), st.integers(2, 10),
    st.floats(0.5, 20.0), st.floats(0.5, 20.0), st.floats(0.1, 2.0), st.floats(0.0, 1.0), st.sampled_from([0.0, 1 / 3]),
)  # fmt: skip
def test_no_schedule_the_simulator_prices_beats_the_roofline(data, layers, experts, top_k, tokens, copy_ms, cpu_ms, dense_ms, overlap, least_share):
    """The miss rule's schedule, with its launches, contention and greedy order, never ends a run
    sooner than the roofline's best split of the same hits and misses (splits beside other misses too)."""
    draw = st.lists(st.integers(0, experts - 1), min_size=top_k, max_size=top_k, unique=True)
    choices = [[data.draw(draw) for _ in range(layers)] for _ in range(tokens)]
    meta = tiny_meta(num_layers=layers, num_experts=experts, top_k=top_k, expert_bytes=1_000_000)
    replay = ReplayInput.from_trace(Trace(meta, pd.DataFrame(decode_rows(choices))))
    costs = Profile(name="drawn", expert_bytes=1_000_000, h2d_gbps=1.0 / copy_ms, cpu_expert_ms={4: {1: cpu_ms}}, gpu_expert_ms={1: 0.1},
                    dense_ms={1: dense_ms}, layer_overhead_ms=0.0, split_min_gpu_share=least_share, split_launch_ms=0.2,
                    dense_overlap_ms=overlap * dense_ms)  # fmt: skip
    slots = data.draw(st.integers(top_k, layers * experts))
    for policy in ("lru", "eta"):
        run = simulate(replay, Geometry(1, slots), policy, costs, threads=4, keep_outcome=True)
        assert run.decode_s >= roofline(replay, run.outcome, costs, threads=4).decode_s - 1e-12, policy
