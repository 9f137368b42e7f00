"""Where experts run: expertcache's cache and the placements of the systems it is measured against.

A placement answers, for each access, the same three things the cache core does (hit, slot,
evicted), so the runtime executes and the simulator prices every system through one path:
``cache`` and ``fetch`` use the cache core, ``static`` and ``cpu`` never move an expert.
"""

from __future__ import annotations

import numpy as np

from expertcache.errors import ConfigError
from expertcache.simulator.cache import ExpertCache
from expertcache.simulator.config import CacheConfig
from expertcache.simulator.schedule import CPU_ONLY, GPU_ONLY, HYBRID

PLACEMENTS = {
    "cache": "expertcache: hits on the GPU, each miss on the CPU or copied to the GPU, whichever finishes first",
    "fetch": "on-demand fetching: every miss copied to the GPU and computed there (no CPU compute)",
    "static": "llama.cpp --n-cpu-moe: the experts of the last layers that fit stay on the GPU, the rest on the CPU",
    "cpu": "every expert on the CPU (llama.cpp --cpu-moe, Fiddler)",
}
MISS_PATHS = {"cache": HYBRID, "fetch": GPU_ONLY, "static": CPU_ONLY, "cpu": CPU_ONLY}
"""Where each placement computes a miss (see ``schedule.split_misses``)."""


class AllOnCpu:
    """Stands in for the cache when every expert is computed on the CPU."""

    def access_many(self, layers, experts, weights, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        count = len(layers)
        return np.zeros(count, dtype=np.bool_), np.full(count, -1, dtype=np.int64), np.full(count, -1, dtype=np.int64)


class StaticPlacement:
    """Stands in for the cache when whole layers' experts are placed on the GPU once and never move.

    The last layers get the slots, as llama.cpp's ``--n-cpu-moe N`` keeps the first N layers'
    experts on the CPU.
    """

    def __init__(self, moe_layers: list[int], num_layers: int, num_experts: int, slots: int) -> None:
        resident = moe_layers[len(moe_layers) - min(len(moe_layers), slots // num_experts) :]
        self.num_experts = num_experts
        self.first_slot = np.full(num_layers, -1, dtype=np.int64)  # layer → its first slot, -1 on the CPU
        self.first_slot[resident] = np.arange(len(resident)) * num_experts

    def access_many(self, layers, experts, weights, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        base = self.first_slot[np.asarray(layers, dtype=np.int64)]
        hit = base >= 0
        slot = np.where(hit, base + np.asarray(experts, dtype=np.int64), -1)
        return hit, slot, np.full(len(slot), -1, dtype=np.int64)


def placement_decider(
    placement: str, config: CacheConfig, num_layers: int, num_experts: int, moe_layers: list[int]
) -> ExpertCache | StaticPlacement | AllOnCpu:
    """The object whose ``access_many`` decides every access under ``placement``."""
    if placement not in PLACEMENTS:
        raise ConfigError(f"unknown placement '{placement}'; known: {', '.join(PLACEMENTS)}")
    if placement == "cpu":
        return AllOnCpu()
    if placement == "static":
        return StaticPlacement(moe_layers, num_layers, num_experts, config.slots)
    return ExpertCache(config.geometry, config.policy, num_layers, num_experts, moe_layers, seed=config.seed)
