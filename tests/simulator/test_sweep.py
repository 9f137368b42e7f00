"""Sweeps: the grid, ranking, the chosen configuration, and executor independence."""

from __future__ import annotations

import pandas as pd
import pytest

from expertcache.errors import ConfigError
from expertcache.simulator.config import CacheConfig
from expertcache.simulator.costs import load_profile
from expertcache.simulator.geometry import SET_COUNTS, geometries_for_slots, set_counts, slots_for_budget
from expertcache.simulator.sweep import best_config, candidates, rank, run_sweep


def test_geometries_take_the_most_ways_for_each_set_count():
    found = [(g.sets, g.ways) for g in geometries_for_slots(6, top_k=2)]
    assert found == [(1, 6), (2, 3), (3, 2), (4, 1), (5, 1), (6, 1)]
    with pytest.raises(ConfigError, match="fewer than top_k"):
        geometries_for_slots(1, top_k=2)


def test_thousands_of_slots_try_every_small_set_count_then_a_log_scale_up_to_the_largest():
    assert set_counts(58) == list(range(1, 59))  # Mixtral under 24 GiB: every set count, as before
    counts = set_counts(2300)  # Qwen3-30B-A3B under 24 GiB
    assert len(counts) == SET_COUNTS and counts[0] == 1 and counts[-1] == 2300
    assert counts[:13] == list(range(1, 14))
    steps = [later / earlier for earlier, later in zip(counts[12:], counts[13:])]
    assert all(a < b for a, b in zip(counts, counts[1:])) and max(steps) < 1.2 and min(steps) > 1.05
    found = geometries_for_slots(2300, top_k=8, max_sets=500, most=10)
    assert [g.sets for g in found] == set_counts(500, 10) and all(g.ways == 2300 // g.sets for g in found)


def test_budget_smaller_than_one_expert_is_refused():
    assert slots_for_budget(10 * 2**20, 2**20) == 10
    with pytest.raises(ConfigError, match="smaller than one expert"):
        slots_for_budget(100, 2**20)


def test_results_do_not_depend_on_the_executor(small_trace):
    todo = candidates(geometries_for_slots(4, top_k=1), ["lru", "eta", "random", "belady"], [16])
    profile = load_profile("h100")
    serial = run_sweep([small_trace], todo, profile, executor="serial")
    processes = run_sweep([small_trace], todo, profile, executor="process", workers=2)
    ray_local = run_sweep([small_trace], todo, profile, executor="ray")
    key = ["sets", "ways", "policy", "threads", "trace"]
    for other in (processes, ray_local):
        pd.testing.assert_frame_equal(
            serial.sort_values(key).reset_index(drop=True), other.sort_values(key).reset_index(drop=True)
        )


def test_ranking_puts_the_fastest_runnable_configuration_first(small_trace):
    # on the desktop profile copies are slow, so misses run on the CPU and more threads win
    todo = candidates(geometries_for_slots(3, top_k=1), ["lru", "belady"], [2, 24])
    results = run_sweep([small_trace, small_trace], todo, load_profile("desktop-4090"), executor="serial")
    ranked = rank(results)
    assert len(ranked) == len(todo)
    assert ranked.tokens_per_s.is_monotonic_decreasing
    best = best_config(ranked, budget_bytes=3_000_000)
    assert best.policy == "lru" and best.threads == 24
    top_lru = ranked[ranked.policy == "lru"].iloc[0]
    assert (best.sets, best.ways) == (top_lru.sets, top_lru.ways)


def test_cache_config_round_trips_through_json(tmp_path):
    config = CacheConfig(sets=14, ways=4, policy="eta", threads=15, budget_bytes=20 * 2**30)
    config.to_json(tmp_path / "c.json")
    assert CacheConfig.from_json(tmp_path / "c.json") == config
    (tmp_path / "bad.json").write_text('{"sets": 2}')
    with pytest.raises(ConfigError, match="not a CacheConfig"):
        CacheConfig.from_json(tmp_path / "bad.json")
