"""The one set-associative expert cache, shared by the simulator and the live runtime.

The state is a handful of numpy arrays and ``access_sequence`` is one compiled function over
them: the simulator hands it a whole trace, the runtime (through :class:`ExpertCache`) the
accesses of one layer of one forward pass at a time. Both therefore make exactly the same
decisions for the same sequence of accesses.

Keys are ``layer * num_experts + expert``; a slot is ``set * ways + way``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from expertcache.errors import ConfigError
from expertcache.simulator.geometry import Geometry
from expertcache.simulator.markov import (
    add_expert, later_visit_reuse, model_version, new_markov_arrays, next_visit_reuse, refresh_evidence, start_visit,
)  # fmt: skip
from expertcache.simulator.policies import BELADY, DEFAULT_DECAY, ETA, LFU, LRU, MARKOV, RANDOM, SCORE, get_policy, online_policy

NEVER = np.float64(2.0**62)
"""Next-use index of an access whose key is never used again."""


@dataclass
class CacheState:
    """Everything the cache core reads and writes; arrays so compiled code can own them."""

    policy: int
    ways: int
    set_of_key: np.ndarray  # int64[K]
    layer_ordinal: np.ndarray  # int64[num_layers]: position of a layer in the MoE-layer cycle
    num_experts: int
    num_moe_layers: int
    decay: float
    tags: np.ndarray = field(init=False)  # int64[slots]: key held by a slot, -1 if empty
    stamp: np.ndarray = field(init=False)  # float64[slots]: the policy's priority
    tie: np.ndarray = field(init=False)  # float64[slots]: last use, breaks priority ties
    location: np.ndarray = field(init=False)  # int64[K]: slot of a key, -1 if absent
    key_stat: np.ndarray = field(init=False)  # float64[K]: decayed score / frequency per key (markov: its eta)
    key_step: np.ndarray = field(init=False)  # int64[K]: forward pass that last updated key_stat (markov: model version)
    layer_step: np.ndarray = field(init=False)  # int64[num_layers]: last pass that visited a layer
    counters: np.ndarray = field(init=False)  # int64[2]: access clock, random-number state
    likelihood: np.ndarray = field(init=False)  # markov only, these four: see markov.new_markov_arrays
    layer_counts: np.ndarray = field(init=False)
    recent: np.ndarray = field(init=False)
    evidence: np.ndarray = field(init=False)

    slots: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        num_keys = len(self.set_of_key)
        self.tags = np.full(self.slots, -1, dtype=np.int64)
        self.stamp = np.zeros(self.slots, dtype=np.float64)
        self.tie = np.zeros(self.slots, dtype=np.float64)
        self.location = np.full(num_keys, -1, dtype=np.int64)
        self.key_stat = np.zeros(num_keys, dtype=np.float64)
        self.key_step = np.full(num_keys, -1, dtype=np.int64)
        self.layer_step = np.full(len(self.layer_ordinal), -1, dtype=np.int64)
        self.counters = np.array([0, (self.seed * 0x9E3779B97F4A7C15 + 1) & 0x7FFFFFFFFFFFFFFF or 1], dtype=np.int64)
        learns = self.policy == MARKOV
        self.likelihood, self.layer_counts, self.recent, self.evidence = new_markov_arrays(
            self.num_moe_layers if learns else 0, self.num_experts if learns else 0, num_keys if learns else 0
        )

    def args(self) -> tuple:
        """The positional arguments of ``access_sequence`` that describe this cache."""
        return (
            self.policy, self.ways, self.set_of_key, self.layer_ordinal, self.num_experts,
            self.num_moe_layers, self.decay, self.tags, self.stamp, self.tie, self.location,
            self.key_stat, self.key_step, self.layer_step, self.counters, self.likelihood, self.layer_counts,
            self.recent, self.evidence,
        )  # fmt: skip


def new_state(
    geometry: Geometry,
    policy: str,
    num_layers: int,
    num_experts: int,
    moe_layers: list[int],
    seed: int = 0,
    decay: float = DEFAULT_DECAY,
) -> CacheState:
    """An empty cache of ``geometry`` under ``policy`` for a model of this shape."""
    if not 0.0 < decay < 1.0:
        raise ConfigError(f"decay must be in (0, 1), got {decay}")
    layer_ordinal = np.zeros(num_layers, dtype=np.int64)
    layer_ordinal[np.asarray(moe_layers, dtype=np.int64)] = np.arange(len(moe_layers))
    return CacheState(
        policy=get_policy(policy).code,
        ways=geometry.ways,
        set_of_key=geometry.set_of_key(num_layers, num_experts),
        layer_ordinal=layer_ordinal,
        num_experts=num_experts,
        num_moe_layers=len(moe_layers),
        decay=decay,
        slots=geometry.slots,
        seed=seed,
    )


@njit(cache=True, error_model="numpy")
def access_sequence(
    policy, ways, set_of_key, layer_ordinal, num_experts, num_moe_layers, decay,
    tags, stamp, tie, location, key_stat, key_step, layer_step, counters, likelihood, layer_counts, recent, evidence,
    layer, expert, weight, step, next_use, hit_out, slot_out, evicted_out,
):  # fmt: skip
    """Look up and update the cache for accesses ``i = 0 .. len(layer) - 1``, in order.

    Access i is (layer[i], expert[i]) with router weight weight[i] in forward pass step[i];
    next_use[i] (the index of the next access to the same key) is read only by Belady.
    Writes ``hit_out[i]``; ``slot_out[i]``: on a hit the slot holding the expert, on a miss
    the slot it was inserted into (its copy starts now) or -1 when the policy bypassed it;
    ``evicted_out[i]``: the key evicted to make room, or -1.

    The whole body is one loop on purpose: numba reference-counts every array handed to a
    function call, and per-access calls with this many arrays ran 15x slower.
    """
    cycle = num_moe_layers
    for i in range(len(layer)):
        key = layer[i] * num_experts + expert[i]
        now = counters[0]
        counters[0] = now + 1
        if policy == MARKOV and (i == 0 or layer[i] != layer[i - 1] or step[i] != step[i - 1]):
            # The router has chosen all of this visit's experts before any of them runs: learn
            # from the whole visit first, so that every decision in it sees the same set.
            here = layer_ordinal[layer[i]]
            if layer_step[layer[i]] != step[i]:
                start_visit(likelihood, layer_counts, recent, evidence, here, tags, layer_ordinal, num_experts)
            j = i
            while j < len(layer) and layer[j] == layer[i] and step[j] == step[i]:
                add_expert(likelihood, layer_counts, recent, evidence, here, expert[j], tags, layer_ordinal, num_experts)
                j += 1
        layer_step[layer[i]] = step[i]
        if policy == SCORE:
            key_stat[key] = key_stat[key] * decay ** np.float64(step[i] - key_step[key]) + weight[i]
            key_step[key] = step[i]
        elif policy == ETA and key_step[key] != step[i]:
            key_stat[key] = key_stat[key] * decay ** np.float64(step[i] - key_step[key]) + (1.0 - decay)
            key_step[key] = step[i]
        evicted_out[i] = -1

        slot = location[key]
        if slot >= 0:
            hit_out[i] = True
            slot_out[i] = slot
            tie[slot] = now
            if policy == LRU:
                stamp[slot] = now
            elif policy == LFU:
                stamp[slot] += 1.0
            elif policy == BELADY:
                stamp[slot] = -next_use[i]
            continue
        hit_out[i] = False

        base = set_of_key[key] * ways
        chosen = -1
        for s in range(base, base + ways):
            if tags[s] < 0:
                chosen = s
                break
        if chosen < 0:
            chosen = base
            if policy == RANDOM:
                x = counters[1]  # xorshift64*, its state kept in the cache so replays repeat
                x ^= x >> 12
                x ^= x << 25
                x ^= x >> 27
                counters[1] = x
                chosen = base + ((x * 0x2545F4914F6CDD1D) >> 33 & 0x7FFFFFFF) % ways
            elif policy == SCORE:  # lowest router-weight score, decayed to this pass
                lowest = np.inf
                for s in range(base, base + ways):
                    score = key_stat[tags[s]] * decay ** np.float64(step[i] - key_step[tags[s]])
                    if score < lowest or (score == lowest and tie[s] < tie[chosen]):
                        lowest = score
                        chosen = s
            elif policy == ETA or policy == MARKOV:  # largest expected time to next use; the newcomer may lose
                here = layer_ordinal[layer[i]]
                worst = -1.0
                newcomer = 0.0
                for s in range(base - 1, base + ways):
                    k = key if s < base else tags[s]
                    k_layer = k // num_experts
                    distance = (layer_ordinal[k_layer] - here) % cycle
                    if distance == 0:
                        distance = cycle
                    if policy == MARKOV and key_step[k] == model_version(recent):
                        eta = key_stat[k]  # nothing learned since it was last priced
                    elif policy == MARKOV:  # the next visit from every layer's latest, later ones from its own
                        o = layer_ordinal[k_layer]
                        e = k - k_layer * num_experts
                        if s < base:  # the newcomer's evidence is kept only while it is cached
                            refresh_evidence(likelihood, layer_counts, recent, evidence, k, distance, layer_ordinal, num_experts)
                        q = max(next_visit_reuse(layer_counts, evidence, k, o, e, num_experts), 1e-9)
                        later = max(later_visit_reuse(likelihood, layer_counts, recent, o, e, distance, num_experts), 1e-9)
                        eta = distance + (1.0 - q) * cycle / later
                        key_stat[k] = eta
                        key_step[k] = model_version(recent)
                    else:
                        q = max(key_stat[k] * decay ** np.float64(layer_step[k_layer] - key_step[k]), 1e-9)
                        eta = distance + (1.0 - q) * cycle / q
                    if s < base:
                        newcomer = eta
                    elif eta > worst or (eta == worst and tie[s] < tie[chosen]):
                        worst = eta
                        chosen = s
                if newcomer >= worst:
                    slot_out[i] = -1
                    continue
            else:  # smallest stored priority (LRU, FIFO, LFU, Belady); ties to the least recent
                for s in range(base + 1, base + ways):
                    if stamp[s] < stamp[chosen] or (stamp[s] == stamp[chosen] and tie[s] < tie[chosen]):
                        chosen = s
                if policy == BELADY and -next_use[i] <= stamp[chosen]:
                    slot_out[i] = -1
                    continue
            evicted_out[i] = tags[chosen]
            location[tags[chosen]] = -1

        tags[chosen] = key
        location[key] = chosen
        tie[chosen] = now
        if policy == LFU:
            stamp[chosen] = 1.0
        elif policy == BELADY:
            stamp[chosen] = -next_use[i]
        else:
            stamp[chosen] = now
        slot_out[i] = chosen


@dataclass(frozen=True)
class AccessResult:
    hit: bool
    slot: int  # -1: a miss the policy chose not to cache
    evicted: int  # key evicted to make room, -1 if none


class ExpertCache:
    """The cache core behind a Python face, for callers that decide one access at a time.

    >>> from expertcache.simulator.geometry import Geometry
    >>> cache = ExpertCache(Geometry(sets=2, ways=1), "lru", num_layers=1, num_experts=4)
    >>> cache.access(0, 3), cache.access(0, 3).hit
    (AccessResult(hit=False, slot=1, evicted=-1), True)
    """

    def __init__(
        self,
        geometry: Geometry,
        policy: str,
        num_layers: int,
        num_experts: int,
        moe_layers: list[int] | None = None,
        seed: int = 0,
        decay: float = DEFAULT_DECAY,
    ) -> None:
        online_policy(policy)
        self.geometry = geometry
        self.num_experts = num_experts
        moe_layers = list(range(num_layers)) if moe_layers is None else list(moe_layers)
        self.state = new_state(geometry, policy, num_layers, num_experts, moe_layers, seed, decay)
        self._args = self.state.args()

    def access_many(self, layers, experts, weights, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Accesses of one forward pass in execution order → (hit, slot, evicted) arrays."""
        layers = np.ascontiguousarray(layers, dtype=np.int64)
        count = len(layers)
        hit = np.zeros(count, dtype=np.bool_)
        slot = np.zeros(count, dtype=np.int64)
        evicted = np.zeros(count, dtype=np.int64)
        access_sequence(
            *self._args, layers, np.ascontiguousarray(experts, dtype=np.int64),
            np.ascontiguousarray(weights, dtype=np.float64), np.full(count, step, dtype=np.int64),
            np.zeros(count), hit, slot, evicted,
        )  # fmt: skip
        return hit, slot, evicted

    def access(self, layer: int, expert: int, weight: float = 1.0, step: int = 0) -> AccessResult:
        hit, slot, evicted = self.access_many([layer], [expert], [weight], step)
        return AccessResult(bool(hit[0]), int(slot[0]), int(evicted[0]))

    def slot_of(self, layer: int, expert: int) -> int:
        """The slot holding (layer, expert), or -1."""
        return int(self.state.location[layer * self.num_experts + expert])
