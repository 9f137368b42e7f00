"""Cache geometry: N sets × M ways, and which set each (layer, expert) maps to."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from expertcache.errors import ConfigError

MAPPINGS = {
    "modulo": "set = (layer * num_experts + expert) mod N (N = 1 is fully associative)",
    "layer": "set = layer mod N: the experts of one layer share a set",
}


@dataclass(frozen=True)
class Geometry:
    """N sets of M ways; ``mapping`` names how a (layer, expert) key picks its set."""

    sets: int
    ways: int
    mapping: str = "modulo"

    def __post_init__(self) -> None:
        if self.sets < 1 or self.ways < 1:
            raise ConfigError(f"a cache needs at least one set and one way, got {self.sets} sets × {self.ways} ways")
        if self.mapping not in MAPPINGS:
            raise ConfigError(f"unknown set mapping '{self.mapping}'; known: {', '.join(MAPPINGS)}")

    @property
    def slots(self) -> int:
        return self.sets * self.ways

    def check_fits(self, top_k: int) -> None:
        """A layer needs its top-k experts at once; fewer slots than that cannot work."""
        if self.slots < top_k:
            raise ConfigError(f"{self.sets} × {self.ways} = {self.slots} slots is fewer than top_k = {top_k}")

    def set_of_key(self, num_layers: int, num_experts: int) -> np.ndarray:
        """Set index for every key ``layer * num_experts + expert``."""
        keys = np.arange(num_layers * num_experts, dtype=np.int64)
        if self.mapping == "modulo":
            return keys % self.sets
        return (keys // num_experts) % self.sets

    def __str__(self) -> str:
        return f"{self.sets}x{self.ways}"


SET_COUNTS = 64
"""The most set counts a sweep tries by default. Models of many small experts hold thousands of
slots (Qwen3-30B-A3B about 2,300 under 24 GiB), and every set count costs a replay per policy:
`markov` took about 5 s a replay there, whatever the geometry (development box)."""


def set_counts(limit: int, most: int = SET_COUNTS) -> list[int]:
    """Every set count from 1 to ``limit`` when there are at most ``most``; else ``most`` of them
    from 1 to ``limit``, each the next whole count or a constant factor past the one before,
    whichever is larger (every small count, then a log scale): neighbouring large counts share
    nearly all their slots and ways, and predict nearly the same."""
    if limit <= most:
        return list(range(1, limit + 1))
    counts = [1]
    while len(counts) < most:
        factor = (limit / counts[-1]) ** (1 / (most - len(counts)))  # the last step lands on limit
        counts.append(max(counts[-1] + 1, round(counts[-1] * factor)))
    return counts


def geometries_for_slots(total_slots: int, top_k: int, max_sets: int | None = None, most: int = SET_COUNTS) -> list[Geometry]:
    """For each set count N of :func:`set_counts`, the geometry with the most ways that fits ``total_slots``.

    A smaller M at the same N only leaves memory unused, so it is not worth simulating.
    """
    if total_slots < top_k:
        raise ConfigError(f"the budget holds {total_slots} expert slots, fewer than top_k = {top_k}")
    limit = total_slots if max_sets is None else min(total_slots, max_sets)
    found = [Geometry(n, total_slots // n) for n in set_counts(limit, most)]
    return [g for g in found if g.slots >= top_k]


def slots_for_budget(budget_bytes: int, expert_bytes: int) -> int:
    """How many expert slots a GPU memory budget holds."""
    if budget_bytes < expert_bytes:
        raise ConfigError(f"a budget of {budget_bytes:,} bytes is smaller than one expert ({expert_bytes:,} bytes)")
    return budget_bytes // expert_bytes
