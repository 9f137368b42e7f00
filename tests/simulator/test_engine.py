"""Timing of the replay engine against hand-computed schedules."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import decode_rows, tiny_meta, write_trace
from expertcache.simulator.costs import Profile
from expertcache.simulator.engine import ReplayInput, simulate
from expertcache.simulator.geometry import Geometry
from expertcache.simulator.schedule import CPU_ONLY, HYBRID, RATES, split_misses
from expertcache.traces.io import read_trace

EXPERT_BYTES = 1_000_000


def rates(copy_s: float, cpu_slowdown: float, copy_slowdown: float, launch_s: float = 0.0, cpu_overhead_s: float = 0.0,
          split_min_gpu_share: float = 0.0, split_launch_s: float | None = None, dense_overlap_s: float = 0.0,
          split_cpu_scale: float = 1.0) -> np.ndarray:  # fmt: skip
    """``split_misses``' rates array, in ``schedule.RATES`` order; no splits unless asked; a split's
    launch costs one GPU launch unless given, and its CPU share its part of a whole CPU expert."""
    split_launch_s = launch_s if split_launch_s is None else split_launch_s
    values = [copy_s, cpu_slowdown, copy_slowdown, launch_s, cpu_overhead_s, split_min_gpu_share, split_launch_s, dense_overlap_s,
              split_cpu_scale]  # fmt: skip
    assert len(values) == len(RATES)
    return np.array(values)


def profile(copy_ms: float, split_min_gpu_share: float = 0.0, dense_overlap_ms: float = 0.0) -> Profile:
    """Round numbers: dense 1 ms, GPU expert 0.1 ms, CPU expert 10 ms, no overhead; whole experts only."""
    return Profile(
        name="hand",
        expert_bytes=EXPERT_BYTES,
        h2d_gbps=EXPERT_BYTES / (copy_ms * 1e-3) / 1e9,
        cpu_expert_ms={4: {1: 10.0}},
        gpu_expert_ms={1: 0.1},
        dense_ms={1: 1.0},
        layer_overhead_ms=0.0,
        split_min_gpu_share=split_min_gpu_share,
        dense_overlap_ms=dense_overlap_ms,
    )


@pytest.fixture
def three_tokens(tmp_path):
    meta = tiny_meta(num_layers=1, num_experts=2, top_k=1, expert_bytes=EXPERT_BYTES)
    return ReplayInput.from_trace(read_trace(write_trace(tmp_path / "t.parquet", meta, decode_rows([[[0]], [[0]], [[0]]]))))


def test_a_miss_runs_on_the_cpu_while_its_copy_makes_the_next_token_hit(three_tokens):
    result = simulate(three_tokens, Geometry(1, 1), "lru", profile(copy_ms=10.0), threads=4)
    # token 0: dense 1 + CPU 10, sooner than copy 10 + GPU 0.1 (copy done at 11 ms);
    # tokens 1, 2: dense 1 + GPU 0.1
    assert (result.hits, result.misses) == (2, 1)
    assert result.decode_s == pytest.approx((11.0 + 1.1 + 1.1) / 1e3)
    assert result.tokens_per_s == pytest.approx(3 / 13.2e-3)
    assert result.stall_s == pytest.approx(0.0)
    assert result.cpu_s == pytest.approx(10e-3)
    assert result.pcie_busy_s == pytest.approx(10e-3)


def test_a_splittable_model_splits_the_lone_miss_and_still_keeps_the_expert(three_tokens):
    result = simulate(three_tokens, Geometry(1, 1), "lru", profile(copy_ms=10.0, split_min_gpu_share=1 / 3), threads=4)
    # token 0: dense 1, then the GPU's half copied (f * 10) while the CPU computes the rest ((1 - f) * 10)
    # at f = 0.5, then the GPU's 0.1: done at 6.1 instead of 11; the rest of the copy lands at 11 ms,
    # so token 1 (dense done at 7.1) waits for it, then hits
    assert (result.hits, result.misses, result.split) == (2, 1, 1)
    assert result.decode_s == pytest.approx((6.1 + 5.0 + 1.1) / 1e3)
    assert result.cpu_s == pytest.approx(5e-3) and result.pcie_busy_s == pytest.approx(10e-3)


def test_the_cache_cores_decisions_are_charged_to_every_layer_visit_as_calibrated(three_tokens):
    # at 4 calibrated slots: 2 ms deciding a visit direct-mapped (upkeep per slot), 5 ms fully
    # associative (1 ms more per way scanned); the three-token trace runs in one slot (1 x 1)
    timed = replace(profile(copy_ms=10.0), decision_ms={"lru": [5.0, 2.0]}, decision_slots=4)
    assert timed.decision_s("lru", 1, 4) == pytest.approx(5e-3) and timed.decision_s("lru", 4, 1) == pytest.approx(2e-3)
    assert timed.decision_s("lru", 8, 2) == pytest.approx(8e-3 + 1e-3) and timed.decision_s("fifo", 1, 4) == 0.0
    plain = simulate(three_tokens, Geometry(1, 1), "lru", profile(copy_ms=10.0), threads=4)
    charged = simulate(three_tokens, Geometry(1, 1), "lru", timed, threads=4)
    assert (charged.hits, charged.misses) == (plain.hits, plain.misses)
    assert charged.decode_s == pytest.approx(plain.decode_s + 3 * 0.5e-3)  # a quarter of the upkeep, per visit
    static = simulate(three_tokens, Geometry(1, 1), "lru", timed, threads=4, placement="static")
    assert static.decode_s == pytest.approx(simulate(three_tokens, Geometry(1, 1), "lru", profile(copy_ms=10.0), threads=4, placement="static").decode_s)


def test_a_cpu_measured_slower_moves_the_miss_to_the_copy_path(three_tokens):
    hand = profile(copy_ms=10.0)
    slower = hand.with_cpu_slower(1.5)
    assert slower.cpu_expert_ms == {4: {1: 15.0}} and hand.cpu_expert_ms == {4: {1: 10.0}}
    assert hand.with_cpu_at(4, 15.0).cpu_expert_ms == slower.cpu_expert_ms  # as measured after a run
    # token 0: CPU 15 ms now loses to copy 10 + GPU 0.1
    assert simulate(three_tokens, Geometry(1, 1), "lru", slower, threads=4).decode_s == pytest.approx((11.1 + 1.1 + 1.1) / 1e3)


def test_each_decode_step_waits_for_the_generation_loop(three_tokens):
    plain = simulate(three_tokens, Geometry(1, 1), "lru", profile(copy_ms=10.0), threads=4)
    looped = simulate(three_tokens, Geometry(1, 1), "lru", replace(profile(copy_ms=10.0), step_overhead_ms=2.0), threads=4)
    # three decode steps, each 2 ms later; the copy in flight from token 0 lands before token 1 either way
    assert looped.decode_s == pytest.approx(plain.decode_s + 3 * 2e-3)
    assert looped.overhead_s == pytest.approx(plain.overhead_s + 3 * 2e-3)
    assert (looped.hits, looped.misses) == (plain.hits, plain.misses)


def test_a_miss_runs_on_the_gpu_when_its_copy_finishes_before_the_cpu_would(three_tokens):
    result = simulate(three_tokens, Geometry(1, 1), "lru", profile(copy_ms=5.0), threads=4)
    # token 0: dense 1, copy 5, GPU 0.1 = 6.1 ms instead of 11 on the CPU
    assert result.cpu_s == 0.0
    assert result.decode_s == pytest.approx((6.1 + 1.1 + 1.1) / 1e3)


@pytest.mark.parametrize(("overlap_ms", "token_ms"), [(0.0, 3.2), (0.5, 2.7), (5.0, 2.6)])
def test_the_host_starts_the_next_layers_dense_work_while_the_gpu_finishes(tmp_path, overlap_ms, token_ms):
    meta = tiny_meta(num_layers=2, num_experts=2, top_k=1, expert_bytes=EXPERT_BYTES)
    trace = write_trace(tmp_path / "t.parquet", meta, decode_rows([[[0], [1]], [[1], [0]]]))
    replay = ReplayInput.from_trace(read_trace(trace))
    result = simulate(replay, Geometry(1, 1), "lru", profile(copy_ms=0.5, dense_overlap_ms=overlap_ms), threads=4)
    # every access misses and is copied: dense 1, copy 0.5, GPU 0.1 per layer. Layer 1's dense
    # starts up to the overlap (at most its own dense time) before layer 0's GPU work ends, but
    # no sooner than the host is free (at 1 ms); each token starts once the last one has ended.
    assert result.misses == 4 and result.cpu_s == 0.0
    assert result.decode_s == pytest.approx(2 * token_ms / 1e3)


def test_a_layers_misses_are_split_between_the_cpu_and_copies(tmp_path):
    meta = tiny_meta(num_layers=1, num_experts=4, top_k=3, expert_bytes=EXPERT_BYTES)
    replay = ReplayInput.from_trace(read_trace(write_trace(tmp_path / "t.parquet", meta, decode_rows([[[0, 1, 2]]]))))
    result = simulate(replay, Geometry(1, 3), "lru", profile(copy_ms=6.0), threads=4)
    # one token, three misses, all kept; copies from 1 ms (dense) on: expert 0 copied by 7, GPU
    # done 7.1 < CPU 11 → GPU; expert 1 would be copied by 13 (GPU 13.1) > CPU 1 + 10 = 11 → CPU,
    # its copy queued behind the ones the GPU waits for; expert 2 copied by 13, GPU 13.1 < CPU
    # 11 + 10 = 21 → GPU; then expert 1's copy, 13 → 19
    assert result.cpu_s == pytest.approx(10e-3)
    assert result.decode_s == pytest.approx(13.1e-3)
    assert result.pcie_busy_s == pytest.approx(18e-3)


def test_a_hit_on_a_copy_still_in_flight_waits_for_it(three_tokens):
    result = simulate(three_tokens, Geometry(1, 1), "lru", profile(copy_ms=20.0), threads=4)
    # token 0 ends at 11 ms with the copy done at 21 ms; token 1 waits 9 ms for it
    assert result.stall_s == pytest.approx(9e-3)
    assert result.decode_s == pytest.approx((11.0 + 10.1 + 1.1) / 1e3)


def test_the_cpu_slows_down_while_a_copy_shares_memory_bandwidth(three_tokens):
    slowed = profile(copy_ms=20.0)
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


def test_a_bypassed_miss_on_the_cpu_leaves_the_link_free():
    cpu_s, gpu_s = np.array([0.0, 10.0]), np.array([0.0, 0.1])
    on_gpu, copy_end, spent = np.zeros(2), np.zeros(2), np.zeros(4)
    # two one-row misses the cache did not keep; ready at 1, copies take 6
    gpu, cpu, link = split_misses(np.array([1, 1]), np.array([False, False]), 2, HYBRID, 1.0, 1.0, 0.0, 1.0,
                                  cpu_s, gpu_s, rates(6.0, 1.5, 1.0), on_gpu, copy_end, spent)  # fmt: skip
    # first: staged copy 1→7, GPU 7.1 < CPU 1 + 15 (slowed by that copy) → GPU;
    # second: copy 7→13, GPU 13.1 < CPU 1 + 15 = 16 → GPU as well
    assert on_gpu.tolist() == [True, True] and copy_end.tolist() == [7.0, 13.0]
    assert (gpu, cpu, link) == pytest.approx((13.1, 1.0, 13.0))
    # never copied when the CPU is the only path, and the link stays where it was
    gpu, cpu, link = split_misses(np.array([1, 1]), np.array([False, False]), 2, CPU_ONLY, 1.0, 1.0, 0.0, 1.0,
                                  cpu_s, gpu_s, rates(6.0, 1.5, 1.0), on_gpu, copy_end, spent)  # fmt: skip
    assert on_gpu.tolist() == [False, False] and copy_end.tolist() == [-1.0, -1.0]
    assert (gpu, cpu, link) == pytest.approx((1.0, 21.0, 0.0))


def test_a_copy_is_slowed_while_the_cpu_computes_in_the_same_layer():
    cpu_s, gpu_s = np.array([0.0, 10.0]), np.array([0.0, 0.1])
    on_gpu, copy_end, spent = np.zeros(2), np.zeros(2), np.zeros(4)
    # miss 0 is copied (7.1 < 11); miss 1 then runs on the CPU, so the layer's copy shares
    # memory with CPU work: charged 6 x 1.5 = 9, the CPU 10 x 1.2 = 12
    gpu, cpu, link = split_misses(np.array([1, 1]), np.array([False, False]), 2, HYBRID, 1.0, 1.0, 0.0, 1.0,
                                  cpu_s, gpu_s, rates(6.0, 1.2, 1.5), on_gpu, copy_end, spent)  # fmt: skip
    assert on_gpu.tolist() == [True, False]
    assert (gpu, cpu, link) == pytest.approx((10.1, 13.0, 10.0))
    assert spent.tolist() == pytest.approx([12.0, 0.1, 9.0, 9.0])


def test_the_host_starts_the_copies_then_queues_gpu_work_before_it_computes_on_the_cpu():
    cpu_s, gpu_s = np.array([0.0, 1.0]), np.array([0.0, 0.1])
    on_gpu, copy_end, spent = np.zeros(2), np.zeros(2), np.zeros(4)
    # ready at 0 with 3 hits to queue at 0.2 each: the CPU can start at 0.6, the copies at once.
    # Miss 0: copied 0 → 0.5, GPU 0.6 but queued by 0.8 < CPU 1.6 → GPU; miss 1: copied 0.5 → 1.0,
    # GPU 1.1 < CPU 0.8 + 1 = 1.8 → GPU too; the host is done queueing at 1.0
    gpu, cpu, link = split_misses(np.array([1, 1]), np.array([False, False]), 2, HYBRID, 0.0, 0.3, 0.0, 0.6,
                                  cpu_s, gpu_s, rates(0.5, 1.0, 1.0, launch_s=0.2), on_gpu, copy_end, spent)  # fmt: skip
    assert on_gpu.tolist() == [True, True] and copy_end.tolist() == pytest.approx([0.5, 1.0])
    assert (gpu, cpu, link) == pytest.approx((1.1, 1.0, 1.0))
    # queueing for free, the second miss runs on the CPU instead (done at 1.0, before its GPU 1.1)
    gpu, cpu, link = split_misses(np.array([1, 1]), np.array([False, False]), 2, HYBRID, 0.0, 0.3, 0.0, 0.0,
                                  cpu_s, gpu_s, rates(0.5, 1.0, 1.0), on_gpu, copy_end, spent)  # fmt: skip
    assert on_gpu.tolist() == [True, False] and cpu == pytest.approx(1.0)


def test_the_gpus_hidden_tail_counts_for_the_gpu_path():
    cpu_s, gpu_s = np.array([0.0, 10.0]), np.array([0.0, 0.1])
    on_gpu, copy_end, spent = np.zeros(1), np.zeros(1), np.zeros(4)
    # copy 10.5 + GPU 0.1 ends after the CPU's 10, but the host waits only for 10.6 - 1 of it
    for overlap_s, expected in ((0.0, 0.0), (1.0, 1.0)):
        split_misses(np.array([1]), np.array([False]), 1, HYBRID, 0.0, 0.0, 0.0, 0.0,
                     cpu_s, gpu_s, rates(10.5, 1.0, 1.0, dense_overlap_s=overlap_s), on_gpu, copy_end, spent)  # fmt: skip
        assert on_gpu[0] == expected


def test_a_layer_with_cpu_work_pays_the_cpu_paths_overhead_once():
    cpu_s, gpu_s = np.array([0.0, 10.0]), np.array([0.0, 0.1])
    on_gpu, copy_end, spent = np.zeros(2), np.zeros(2), np.zeros(4)
    costs = rates(6.0, 1.0, 1.0, cpu_overhead_s=0.5)
    gpu, cpu, _ = split_misses(np.array([1, 1]), np.array([False, False]), 2, CPU_ONLY, 1.0, 1.0, 0.0, 1.0,
                               cpu_s, gpu_s, costs, on_gpu, copy_end, spent)  # fmt: skip
    assert cpu == pytest.approx(1.0 + 0.5 + 20.0) and spent[0] == pytest.approx(20.5)
    # a lone miss: copy 6 + GPU 0.1 against CPU 10 + 0.5; a cheaper CPU loses by its overhead alone
    cheap = np.array([0.0, 6.0])
    split_misses(np.array([1]), np.array([False]), 1, HYBRID, 0.0, 0.0, 0.0, 0.0, cheap, gpu_s, costs, on_gpu, copy_end, spent)
    assert on_gpu[0]


@pytest.mark.parametrize("admitted", [False, True])
def test_a_lone_miss_is_split_so_that_both_paths_end_together(admitted):
    cpu_s, gpu_s = np.array([0.0, 10.0]), np.array([0.0, 0.1])
    share, copy_end, spent = np.zeros(1), np.zeros(1), np.zeros(4)
    # whole: copy 6 + GPU 0.1 = 6.1 beats CPU 10; split: f * 6 = (1 - f) * 10 at f = 10 / 16, then GPU 0.1
    gpu, cpu, link = split_misses(np.array([1]), np.array([admitted]), 1, HYBRID, 0.0, 0.0, 0.0, 0.0,
                                  cpu_s, gpu_s, rates(6.0, 1.0, 1.0, split_min_gpu_share=1 / 3), share, copy_end, spent)  # fmt: skip
    assert share[0] == pytest.approx(10 / 16)
    assert (gpu, cpu) == pytest.approx((3.85, 3.75))
    # the GPU's slices land first; a kept expert's remaining bytes follow on the link
    assert link == pytest.approx(6.0 if admitted else 3.75) and copy_end[0] == pytest.approx(link)
    assert spent.tolist() == pytest.approx([3.75, 0.1, link, 3.75])


def test_a_splits_host_time_delays_its_cpu_share_and_can_make_a_whole_copy_sooner():
    cpu_s, gpu_s = np.array([0.0, 10.0]), np.array([0.0, 0.1])
    share, copy_end, spent = np.zeros(1), np.zeros(1), np.zeros(4)
    # the CPU's share starts after the split's launch of 1: f * 6 = 1 + (1 - f) * 10 at f = 11 / 16
    gpu, cpu, _ = split_misses(np.array([1]), np.array([False]), 1, HYBRID, 0.0, 0.0, 0.0, 0.0,
                               cpu_s, gpu_s, rates(6.0, 1.0, 1.0, split_min_gpu_share=1 / 3, split_launch_s=1.0), share, copy_end, spent)  # fmt: skip
    assert share[0] == pytest.approx(11 / 16) and (gpu, cpu) == pytest.approx((4.225, 4.125))
    # a launch of 6: the CPU would get nothing left to do before the whole copy (6.1) is done
    split_misses(np.array([1]), np.array([False]), 1, HYBRID, 0.0, 0.0, 0.0, 0.0,
                 cpu_s, gpu_s, rates(6.0, 1.0, 1.0, split_min_gpu_share=1 / 3, split_launch_s=6.0), share, copy_end, spent)  # fmt: skip
    assert share[0] == 1.0


def test_a_split_cpu_share_slower_than_its_part_of_a_whole_expert_leaves_the_gpu_more():
    cpu_s, gpu_s = np.array([0.0, 10.0]), np.array([0.0, 0.1])
    share, copy_end, spent = np.zeros(1), np.zeros(1), np.zeros(4)
    # the CPU's share at 1.25 times its part of 10: f * 6 = (1 - f) * 12.5 at f = 12.5 / 18.5
    gpu, cpu, _ = split_misses(np.array([1]), np.array([False]), 1, HYBRID, 0.0, 0.0, 0.0, 0.0, cpu_s, gpu_s,
                               rates(6.0, 1.0, 1.0, split_min_gpu_share=1 / 3, split_cpu_scale=1.25), share, copy_end, spent)  # fmt: skip
    assert share[0] == pytest.approx(12.5 / 18.5)
    assert (gpu, cpu) == pytest.approx((6 * 12.5 / 18.5 + 0.1, 6 * 12.5 / 18.5)) and spent[0] == pytest.approx(cpu)
    # a whole miss on the CPU is not a split: its time is the whole expert's
    spent = np.zeros(4)
    split_misses(np.array([1]), np.array([False]), 1, CPU_ONLY, 0.0, 0.0, 0.0, 0.0, cpu_s, gpu_s,
                 rates(6.0, 1.0, 1.0, split_min_gpu_share=1 / 3, split_cpu_scale=1.25), share, copy_end, spent)  # fmt: skip
    assert share[0] == 0.0 and spent[0] == pytest.approx(10.0)


def test_a_split_leaves_the_gpu_at_least_its_least_share():
    cpu_s, gpu_s = np.array([0.0, 2.5]), np.array([0.0, 0.1])
    share, copy_end, spent = np.zeros(1), np.zeros(1), np.zeros(4)
    # balanced at f = 2.5 / 8.5, below a third: the GPU takes a third (copied by 2), the CPU is done at 1.67
    gpu, cpu, _ = split_misses(np.array([1]), np.array([False]), 1, HYBRID, 0.0, 0.0, 0.0, 0.0,
                               cpu_s, gpu_s, rates(6.0, 1.0, 1.0, split_min_gpu_share=1 / 3), share, copy_end, spent)  # fmt: skip
    assert share[0] == pytest.approx(1 / 3) and (gpu, cpu) == pytest.approx((2.1, 2.5 * 2 / 3))


def test_no_split_for_a_layout_that_cannot_be_cut_nor_when_a_whole_side_is_sooner():
    cpu_s, gpu_s = np.array([0.0, 10.0]), np.array([0.0, 0.1])
    share, copy_end, spent = np.zeros(2), np.zeros(2), np.zeros(4)
    split_misses(np.array([1]), np.array([False]), 1, HYBRID, 0.0, 0.0, 0.0, 0.0, cpu_s, gpu_s, rates(6.0, 1.0, 1.0), share, copy_end, spent)
    assert share[0] == 1.0
    # the link busy for 20 more: the GPU's share would wait behind it, the CPU alone ends at 10
    split_misses(np.array([1]), np.array([False]), 1, HYBRID, 0.0, 0.0, 20.0, 0.0,
                 cpu_s, gpu_s, rates(6.0, 1.0, 1.0, split_min_gpu_share=1 / 3), share, copy_end, spent)  # fmt: skip
    assert share[0] == 0.0
    # two misses, copy 6 against CPU 7: one each way ends at 7; a split of the second at its least
    # share would copy it behind the first, 6 + 2, too late
    split_misses(np.array([1, 1]), np.array([False, False]), 2, HYBRID, 0.0, 0.0, 0.0, 0.0,
                 np.array([0.0, 7.0]), gpu_s, rates(6.0, 1.0, 1.0, split_min_gpu_share=1 / 3), share, copy_end, spent)  # fmt: skip
    assert share.tolist() == [1.0, 0.0]


def test_of_two_misses_the_second_is_split_given_where_the_first_went():
    gpu_s = np.array([0.0, 0.1])
    share, copy_end, spent = np.zeros(2), np.zeros(2), np.zeros(4)
    # CPU 4, copy 6: the first runs on the CPU (4 < 6.1); the second's copy starts at once and the
    # CPU takes it up after the first: f * 6 = 4 + (1 - f) * 4 at f = 0.8, then the GPU's 0.1
    gpu, cpu, link = split_misses(np.array([1, 1]), np.array([False, False]), 2, HYBRID, 0.0, 0.0, 0.0, 0.0,
                                  np.array([0.0, 4.0]), gpu_s, rates(6.0, 1.0, 1.0, split_min_gpu_share=1 / 3), share, copy_end, spent)  # fmt: skip
    assert share.tolist() == pytest.approx([0.0, 0.8])
    assert (gpu, cpu, link) == pytest.approx((4.9, 4.8, 4.8)) and copy_end.tolist() == pytest.approx([-1.0, 4.8])
    assert spent.tolist() == pytest.approx([4.8, 0.1, 4.8, 4.8])
    # CPU 10, copy 6: the first is copied (6.1 < 10); the second's slices queue behind it (balanced at
    # f = 0.25, below a third): copied 6 to 8 while the CPU computes its other two thirds by 6.67
    gpu, cpu, link = split_misses(np.array([1, 1]), np.array([False, False]), 2, HYBRID, 0.0, 0.0, 0.0, 0.0,
                                  np.array([0.0, 10.0]), gpu_s, rates(6.0, 1.0, 1.0, split_min_gpu_share=1 / 3), share, copy_end, spent)  # fmt: skip
    assert share.tolist() == pytest.approx([1.0, 1 / 3])
    assert (gpu, cpu, link) == pytest.approx((8.1, 20 / 3, 8.0)) and copy_end.tolist() == pytest.approx([6.0, 8.0])
