"""Reuse numbers on a hand-made trace whose every answer is worked out in the comments."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_meta, write_trace
from expertcache.analysis.reuse import reuse_distances, reuse_numbers
from expertcache.traces.io import read_trace

# request 0, decode positions 3, 4, 5 (prefill 0..2 must be ignored); request 1 at 5 and 7 (a gap)
DECODE = [  # (request, position, {layer: experts})
    (0, 3, {0: [0, 1], 1: [0, 2]}),
    (0, 4, {0: [0, 2], 1: [0, 2]}),
    (0, 5, {0: [3, 2], 1: [1, 3]}),
    (1, 5, {0: [0, 1], 1: [0, 2]}),
    (1, 7, {0: [0, 1], 1: [0, 2]}),
]


@pytest.fixture
def hand_trace(tmp_path):
    cols = {k: [] for k in ("request", "position", "phase", "layer", "rank", "expert", "weight")}

    def add(request, position, phase, layer, experts):
        for rank, expert in enumerate(experts):
            for key, value in zip(cols, (request, position, phase, layer, rank, expert, 0.5)):
                cols[key].append(value)

    for position in range(3):
        for layer in (0, 1):
            add(0, position, "prefill", layer, [3, 1])
    for request, position, layers in DECODE:
        for layer, experts in layers.items():
            add(request, position, "decode", layer, experts)
    return read_trace(write_trace(tmp_path / "hand.parquet", tiny_meta(num_layers=2, num_experts=4, top_k=2), cols))


def test_consecutive_tokens(hand_trace):
    numbers = reuse_numbers(hand_trace)["consecutive_token"]
    # pairs (3,4) and (4,5) of request 0 only; overlaps L0: 1, 1; L1: 2, 0
    assert numbers["pairs"] == 4
    assert numbers["any"] == pytest.approx(3 / 4)
    assert numbers["fraction"] == pytest.approx((0.5 + 0.5 + 1.0 + 0.0) / 4)
    assert numbers["chance_any"] == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)
    assert numbers["chance_fraction"] == pytest.approx(0.5)


def test_consecutive_layers(hand_trace):
    numbers = reuse_numbers(hand_trace)["consecutive_layer"]
    # every decode token: |S(t,0) ∩ S(t,1)| = 1, 2, 1, 1, 1
    assert numbers["pairs"] == 5
    assert numbers["any"] == pytest.approx(1.0)
    assert numbers["fraction"] == pytest.approx((0.5 + 1 + 0.5 + 0.5 + 0.5) / 5)


def test_windows(hand_trace):
    numbers = reuse_numbers(hand_trace)
    assert numbers["window"]["1"] == pytest.approx(0.5)
    # only position 5 of request 0 has two predecessors: L0 {3,2} vs {0,2}∪{0,1} → 1/2; L1 {1,3} vs {0,2} → 0
    assert numbers["window"]["2"] == pytest.approx(0.25)
    assert numbers["window"]["3"] is None and numbers["window"]["4"] is None
    assert numbers["window_chance"]["2"] == pytest.approx(1 - 0.5**2)


def test_per_layer_popularity_and_json(hand_trace):
    numbers = reuse_numbers(hand_trace)
    assert numbers["per_layer"]["0"]["consecutive_token"] == {"any": 1.0, "fraction": 0.5}
    assert numbers["per_layer"]["1"]["consecutive_token"] == {"any": 0.5, "fraction": 0.5}
    assert numbers["per_layer"]["0"]["consecutive_layer"]["fraction"] == pytest.approx(0.6)
    assert "consecutive_layer" not in numbers["per_layer"]["1"]
    assert numbers["popularity"] == {"0": [4, 3, 2, 1], "1": [4, 1, 4, 1]}
    assert numbers["decode_tokens"] == 5
    json.loads(json.dumps(numbers, allow_nan=False))


def test_reuse_distances_stay_inside_contiguous_runs(hand_trace):
    histogram = reuse_distances(hand_trace, cap=4)
    # L0 expert 0 (3→4), L0 expert 2 (4→5), L1 experts 0 and 2 (3→4); request 1 has a gap
    assert histogram.tolist() == [0, 4, 0, 0, 0]
