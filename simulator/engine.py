"""Replay a trace through the cache core and the cost model.

Each (forward pass, MoE layer) is charged as the runtime executes it: the dense part on the GPU,
then hits on the GPU from their slots (waiting for a copy still in flight), then each miss where
``schedule.split_misses`` puts it: on the CPU, on the GPU after its copy (copies run one after
another on the PCIe link), or, for the layer's last miss, split between the two. The layer takes as long as the
slower of the GPU and CPU paths, plus a fixed dispatch overhead and the cache core's own time to
decide the layer's accesses (``Profile.decision_s``), less the GPU's tail that the
host's next dense work hides (``Profile.dense_overlap_ms``). Each decode pass first waits for the
generation loop's own work since the last one (``Profile.step_overhead_ms``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from expertcache.simulator.cache import NEVER, access_sequence, new_state
from expertcache.simulator.config import CacheConfig
from expertcache.simulator.costs import Profile
from expertcache.simulator.geometry import Geometry
from expertcache.simulator.placements import MISS_PATHS, placement_decider
from expertcache.simulator.policies import get_policy
from expertcache.simulator.schedule import rates_of, split_misses
from expertcache.traces.io import Trace
from expertcache.traces.schema import TraceMeta

HIT, MISS, BYPASS = 1, 0, -1
"""Per-access outcomes: hit, miss inserted into the cache, miss the policy did not cache."""


@dataclass
class ReplayInput:
    """A trace flattened into execution order, ready for any number of replays."""

    meta: TraceMeta
    layer: np.ndarray
    expert: np.ndarray
    weight: np.ndarray
    step: np.ndarray
    next_use: np.ndarray
    group_start: np.ndarray  # int64[groups + 1]: accesses of (pass, layer) g are [start[g], start[g+1])
    group_tokens: np.ndarray  # int64[groups]: tokens in that forward pass
    group_decode: np.ndarray  # bool[groups]
    decode_tokens: int
    prefill_tokens: int

    @property
    def num_accesses(self) -> int:
        return len(self.layer)

    @classmethod
    def from_trace(cls, trace: Trace) -> "ReplayInput":
        frame = trace.in_execution_order()
        layer = frame.layer.to_numpy(np.int64)
        expert = frame.expert.to_numpy(np.int64)
        step = frame.step.to_numpy(np.int64)
        decode = (frame.phase == "decode").to_numpy()
        key = layer * trace.meta.num_experts + expert
        starts = np.flatnonzero(np.r_[True, (step[1:] != step[:-1]) | (layer[1:] != layer[:-1])])
        tokens_per_step = frame.groupby("step").position.nunique().to_numpy(np.int64)
        prefill_rows = frame[~decode]
        return cls(
            meta=trace.meta,
            layer=layer,
            expert=expert,
            weight=frame.weight.to_numpy(np.float64),
            step=step,
            next_use=next_use_of(key),
            group_start=np.r_[starts, len(frame)].astype(np.int64),
            group_tokens=tokens_per_step[step[starts]],
            group_decode=decode[starts],
            decode_tokens=int(len(np.unique(step[decode]))),
            prefill_tokens=int(len(prefill_rows[["request", "position"]].drop_duplicates())),
        )


def next_use_of(keys: np.ndarray) -> np.ndarray:
    """For every access, the index of the next access to the same key (``NEVER`` if none)."""
    order = np.argsort(keys, kind="stable")
    nxt = np.full(len(keys), NEVER, dtype=np.float64)
    same = keys[order[1:]] == keys[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


@dataclass
class SimResult:
    """What one replay predicts."""

    sets: int
    ways: int
    policy: str
    threads: int
    hits: int
    misses: int
    bypassed: int
    split: int  # misses computed partly on the GPU and partly on the CPU
    decode_hits: int
    decode_misses: int
    tokens_per_s: float  # decode tokens per second
    prefill_s: float
    decode_s: float
    gpu_s: float
    cpu_s: float
    pcie_busy_s: float
    stall_s: float
    overhead_s: float
    layer_hits: list[int] = field(repr=False)
    layer_misses: list[int] = field(repr=False)
    outcome: np.ndarray | None = field(default=None, repr=False)

    @property
    def hit_rate(self) -> float:
        return self.hits / max(self.hits + self.misses, 1)

    @property
    def decode_hit_rate(self) -> float:
        return self.decode_hits / max(self.decode_hits + self.decode_misses, 1)

    def summary(self) -> dict:
        """The flat record that sweeps tabulate and ``simulate --format json`` prints."""
        return {
            "sets": self.sets, "ways": self.ways, "slots": self.sets * self.ways, "policy": self.policy,
            "threads": self.threads, "hits": self.hits, "misses": self.misses, "bypassed": self.bypassed, "split": self.split,
            "hit_rate": self.hit_rate, "decode_hit_rate": self.decode_hit_rate,
            "tokens_per_s": self.tokens_per_s, "prefill_s": self.prefill_s, "decode_s": self.decode_s,
            "gpu_s": self.gpu_s, "cpu_s": self.cpu_s, "pcie_busy_s": self.pcie_busy_s,
            "stall_s": self.stall_s, "overhead_s": self.overhead_s,
        }  # fmt: skip


@njit(cache=True, error_model="numpy")
def _charge_time(
    layer, expert, step, num_experts, hit, slot, group_start, group_tokens, group_decode,
    cpu_s, gpu_s, dense_s, rates, overhead_s, step_overhead_s, num_slots, miss_paths,
    totals, counts, layer_hits, layer_misses,
):  # fmt: skip
    """Price the cache's decisions, one (pass, layer) group at a time.

    Hits run on the GPU first (waiting for a copy still in flight), as the runtime launches
    them; then ``schedule.split_misses`` places the misses by ``miss_paths``. The host queues GPU
    work without waiting for it, so it begins the next layer's dense work while the GPU finishes
    up to ``dense_overlap_s`` of this layer's (within a pass: the next pass waits for its token).

    ``totals`` receives prefill, CPU, GPU, PCIe-busy, stall, overhead and decode seconds;
    ``counts`` decode hits, decode misses, bypassed and split misses; the layer arrays hits and misses.
    Counting here saves separate passes over the (millions of) accesses.
    """
    copy_done = np.zeros(num_slots)
    first = np.full(num_experts, -1, np.int64)  # per group: expert → its first access
    count = np.zeros(num_experts, np.int64)
    order = np.zeros(num_experts, np.int64)
    miss_tokens = np.zeros(num_experts, np.int64)
    miss_admitted = np.zeros(num_experts, np.bool_)
    miss_slot = np.zeros(num_experts, np.int64)
    gpu_share = np.zeros(num_experts)
    copy_end = np.zeros(num_experts)
    spent = np.zeros(4)  # CPU, GPU, link busy, stall
    clock = 0.0  # when the previous layer's work ends
    host_free = 0.0  # when the host is done with it
    link_free = 0.0
    for g in range(len(group_start) - 1):
        n_touched = 0
        decode = group_decode[g]
        for i in range(group_start[g], group_start[g + 1]):
            e = expert[i]
            if hit[i]:
                layer_hits[layer[i]] += 1
                counts[0] += decode
            else:
                layer_misses[layer[i]] += 1
                counts[1] += decode
                counts[2] += slot[i] < 0
            if first[e] < 0:
                first[e] = i
                count[e] = 0
                order[n_touched] = e
                n_touched += 1
            count[e] += 1
        dense = dense_s[group_tokens[g]]
        start = clock
        if g > 0 and step[group_start[g]] == step[group_start[g - 1]]:
            # the host starts this layer's dense work once it is free, while the GPU still works
            # (a new pass waits for its token instead)
            start = max(host_free, clock - min(rates[7], dense))
        elif decode:  # and for the generation loop to pick it and set up the pass
            start += step_overhead_s
            totals[5] += step_overhead_s
        gpu = start + dense
        host = gpu  # the host queues each GPU expert in turn
        n_missed = 0
        for j in range(n_touched):
            e = order[j]
            i = first[e]
            first[e] = -1
            n = count[e]
            s = slot[i]
            if hit[i]:
                ready = max(gpu, copy_done[s])
                spent[3] += ready - gpu
                host += rates[3]
                gpu = max(ready + gpu_s[n], host)
                spent[1] += gpu_s[n]
            else:
                miss_tokens[n_missed] = n
                miss_admitted[n_missed] = s >= 0
                miss_slot[n_missed] = s
                n_missed += 1
        gpu, cpu, link_free = split_misses(
            miss_tokens, miss_admitted, n_missed, miss_paths, start + dense, gpu, link_free,
            host, cpu_s, gpu_s, rates, gpu_share, copy_end, spent,
        )  # fmt: skip
        for j in range(n_missed):
            counts[3] += 0 < gpu_share[j] < 1
            if miss_admitted[j]:
                copy_done[miss_slot[j]] = copy_end[j]
        spent[1] += dense
        end = max(gpu, cpu) + overhead_s
        totals[5] += overhead_s
        totals[6 if decode else 0] += end - clock
        clock, host_free = end, cpu + overhead_s
    totals[1] += spent[0]
    totals[2] += spent[1]
    totals[3] += spent[2]
    totals[4] += spent[3]


def simulate(
    replay: ReplayInput,
    geometry: Geometry,
    policy: str,
    profile: Profile,
    threads: int,
    seed: int = 0,
    keep_outcome: bool = False,
    placement: str = "cache",
) -> SimResult:
    """Replay ``replay`` through a cache of ``geometry`` under ``policy`` and price it with ``profile``.

    ``placement`` prices one of the systems expertcache is compared with instead (see
    ``placements.PLACEMENTS``); ``static`` and ``cpu`` ignore the policy.
    """
    meta = replay.meta
    geometry.check_fits(meta.top_k)
    get_policy(policy)
    count = replay.num_accesses
    if placement in ("cache", "fetch"):
        state = new_state(geometry, policy, meta.num_layers, meta.num_experts, meta.moe_layers, seed)
        hit = np.zeros(count, dtype=np.bool_)
        slot = np.zeros(count, dtype=np.int64)
        evicted = np.zeros(count, dtype=np.int64)
        access_sequence(
            *state.args(), replay.layer, replay.expert, replay.weight, replay.step, replay.next_use, hit, slot, evicted
        )
    else:
        config = CacheConfig(sets=geometry.sets, ways=geometry.ways, policy=policy)
        decider = placement_decider(placement, config, meta.num_layers, meta.num_experts, meta.moe_layers)
        hit, slot, _ = decider.access_many(replay.layer, replay.expert, replay.weight, 0)
    # the host's time in the cache core before a layer's misses can start (static and cpu decide nothing)
    decisions_s = profile.decision_s(policy, geometry.sets, geometry.ways) if placement in ("cache", "fetch") else 0.0
    max_tokens = int(replay.group_tokens.max())
    totals = np.zeros(7)
    counts = np.zeros(4, dtype=np.int64)
    layer_hits = np.zeros(meta.num_layers, dtype=np.int64)
    layer_misses = np.zeros(meta.num_layers, dtype=np.int64)
    _charge_time(
        replay.layer, replay.expert, replay.step, meta.num_experts, hit, slot,
        replay.group_start, replay.group_tokens, replay.group_decode,
        profile.cpu_table_s(threads, meta.expert_bytes, max_tokens),
        profile.gpu_table_s(meta.expert_bytes, max_tokens),
        profile.dense_table_s(max_tokens),
        rates_of(profile, meta.expert_bytes),
        profile.layer_overhead_ms / 1e3 + decisions_s,
        profile.step_overhead_ms / 1e3,
        geometry.slots, MISS_PATHS[placement], totals, counts, layer_hits, layer_misses,
    )  # fmt: skip
    decode_s = float(totals[6])
    hits = int(layer_hits.sum())
    return SimResult(
        sets=geometry.sets,
        ways=geometry.ways,
        policy=policy,
        threads=threads,
        hits=hits,
        misses=count - hits,
        bypassed=int(counts[2]),
        split=int(counts[3]),
        decode_hits=int(counts[0]),
        decode_misses=int(counts[1]),
        tokens_per_s=replay.decode_tokens / decode_s if decode_s > 0 else 0.0,
        prefill_s=float(totals[0]),
        decode_s=decode_s,
        gpu_s=float(totals[2]),
        cpu_s=float(totals[1]),
        pcie_busy_s=float(totals[3]),
        stall_s=float(totals[4]),
        overhead_s=float(totals[5]),
        layer_hits=layer_hits.tolist(),
        layer_misses=layer_misses.tolist(),
        outcome=np.where(hit, HIT, np.where(slot >= 0, MISS, BYPASS)).astype(np.int8) if keep_outcome else None,
    )
