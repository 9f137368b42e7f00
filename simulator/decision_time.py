"""How long the cache core takes to decide one layer visit: host time the runtime spends before a
layer's misses can start, which grows with the cache for some policies.

`markov` keeps the evidence of every cached expert current as each routed expert arrives, so a
visit costs in proportion to the slots; `eta` ranks every way of a set on a miss, so a fully
associative cache costs in proportion to them. On the lent H100 a Qwen3-30B-A3B cache of 2,263
slots under `markov` spent about 2 ms of host time per layer deciding, which made the simulator's
choice run at 0.37x on-demand fetching (BENCHMARKS.md, session 21). Calibration times the core on
this machine at the cache's size, in the two extreme geometries; ``Profile.decision_s`` prices any
geometry between them.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from expertcache.simulator.cache import ExpertCache
from expertcache.simulator.geometry import Geometry
from expertcache.simulator.policies import POLICIES

TIMED_VISITS = 100
"""Layer visits timed per policy and geometry, after the cache is full."""


def measure_decision_ms(slots: int, num_layers: int, num_experts: int, moe_layers: list[int], top_k: int, seed: int = 0) -> dict[str, list[float]]:
    """Per online policy, median milliseconds of one layer visit's decisions (``ExpertCache.access_many``,
    as the runtime calls it) with ``slots`` slots: ``[fully associative, direct-mapped]``.

    Routing is drawn uniformly at random, so nearly every access misses: the upper end of what a
    visit costs, and nearly the same for every visit. Each cache is first filled (twice its slots in
    accesses, for at least one MoE-layer cycle) so that every slot holds an expert, as in a long run.
    The median, not the mean: one Phi-3.5-MoE calibration on the lent H100 host read `eta` at 216 and
    86 µs where every other calibration of that shape read 12-20 and 6-11, a stall of the host within
    100 visits of about 10 µs each (BENCHMARKS.md, session 25); the sweep and the miss rule price
    every layer at what this returns."""
    rng = np.random.default_rng(seed)
    warm_up = max(2 * slots // top_k, len(moe_layers))
    routed = [rng.choice(num_experts, size=top_k, replace=False) for _ in range(warm_up + TIMED_VISITS)]
    weights = np.full(top_k, 1.0 / top_k)
    measured = {}
    for name, policy in POLICIES.items():
        if policy.offline_only:
            continue
        medians = []
        for geometry in (Geometry(1, slots), Geometry(slots, 1)):
            cache = ExpertCache(geometry, name, num_layers, num_experts, moe_layers, seed=seed)
            seconds = []
            for visit, experts in enumerate(routed):
                layer = moe_layers[visit % len(moe_layers)]
                started = time.perf_counter()
                cache.access_many(np.full(top_k, layer), experts, weights, visit // len(moe_layers))
                if visit >= warm_up:
                    seconds.append(time.perf_counter() - started)
            medians.append(1e3 * statistics.median(seconds))
        measured[name] = medians
    return measured
