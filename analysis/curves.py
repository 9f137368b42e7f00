"""Hit rate against cache capacity for each policy, with Belady's optimum as the bound."""

from __future__ import annotations

import numpy as np

from expertcache.simulator.costs import load_profile
from expertcache.simulator.engine import ReplayInput, simulate
from expertcache.simulator.geometry import Geometry
from expertcache.simulator.policies import POLICIES
from expertcache.traces.io import Trace

DEFAULT_POLICIES = tuple(POLICIES)


def capacities_for(trace: Trace, points: int = 10) -> list[int]:
    """From top-k slots to every expert of the model, spaced evenly."""
    meta = trace.meta
    total = len(meta.moe_layers) * meta.num_experts
    return sorted({int(c) for c in np.linspace(meta.top_k, total, points).round()})


def hit_rate_curves(
    trace: Trace, capacities: list[int] | None = None, policies=DEFAULT_POLICIES, ways: int | None = None
) -> dict[str, list[tuple[int, float]]]:
    """policy → [(slots, decode hit rate)]; fully associative unless ``ways`` fixes the ways per set."""
    replay = ReplayInput.from_trace(trace)
    profile = load_profile("h100")
    curves: dict[str, list[tuple[int, float]]] = {p: [] for p in policies}
    for capacity in capacities or capacities_for(trace):
        geometry = Geometry(1, capacity) if ways is None else Geometry(max(1, capacity // ways), min(ways, capacity))
        for policy in policies:
            result = simulate(replay, geometry, policy, profile, profile.thread_counts[-1])
            curves[policy].append((geometry.slots, result.decode_hit_rate))
    return curves
