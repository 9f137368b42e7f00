"""Expert reuse in a trace: the numbers that decide which caching and prefetching ideas can pay.

Let S(t, l) be the experts token t chose at MoE layer l, k = top_k, E = num_experts. Only decode
positions count, and pairs never cross requests. Every number is defined in docs/analysis.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np

from expertcache.traces.io import Trace

WINDOWS = (1, 2, 3, 4)


@dataclass
class DecodeChoices:
    """Decode routing as booleans: ``chosen[t, l, e]`` over the decode tokens of all requests.

    ``predecessors[t]`` counts how many positions right before token t (t-1, t-2, ...) are in the
    same request, so windows and pairs never reach across requests or gaps.
    """

    chosen: np.ndarray  # bool [tokens, moe layers, experts]
    predecessors: np.ndarray  # int [tokens]
    layers: list[int]
    top_k: int

    @classmethod
    def of(cls, trace: Trace) -> "DecodeChoices":
        meta = trace.meta
        frame = trace.frame[trace.frame.phase == "decode"]
        tokens = frame[["request", "position"]].drop_duplicates().sort_values(["request", "position"]).reset_index(drop=True)
        token_index = {(r, p): i for i, (r, p) in enumerate(zip(tokens.request, tokens.position))}
        ordinal = {layer: i for i, layer in enumerate(meta.moe_layers)}
        chosen = np.zeros((len(tokens), len(meta.moe_layers), meta.num_experts), dtype=bool)
        rows = np.fromiter((token_index[(r, p)] for r, p in zip(frame.request, frame.position)), dtype=np.int64, count=len(frame))
        chosen[rows, frame.layer.map(ordinal).to_numpy(), frame.expert.to_numpy()] = True
        predecessors = np.zeros(len(tokens), dtype=np.int64)
        same = (tokens.request.to_numpy()[1:] == tokens.request.to_numpy()[:-1]) & (
            tokens.position.to_numpy()[1:] == tokens.position.to_numpy()[:-1] + 1
        )
        for t in np.flatnonzero(same) + 1:
            predecessors[t] = predecessors[t - 1] + 1
        return cls(chosen, predecessors, list(meta.moe_layers), meta.top_k)


def _pair_stats(overlap: np.ndarray, top_k: int) -> dict[str, float | None]:
    """``any`` and ``fraction`` of a set of overlaps; None when there is no pair (JSON has no NaN)."""
    if overlap.size == 0:
        return {"any": None, "fraction": None}
    return {"any": float((overlap > 0).mean()), "fraction": float((overlap / top_k).mean())}


def chance(num_experts: int, top_k: int) -> dict[str, float]:
    """What independent uniform routing would give for a pair of top-k sets."""
    return {"chance_any": 1 - comb(num_experts - top_k, top_k) / comb(num_experts, top_k), "chance_fraction": top_k / num_experts}


def reuse_numbers(trace: Trace) -> dict:
    """Every number of docs/analysis.md for one trace (the JSON-ready dictionary of reuse.json)."""
    meta = trace.meta
    choices = DecodeChoices.of(trace)
    chosen, k = choices.chosen, meta.top_k
    has_previous = choices.predecessors >= 1
    token_overlap = (chosen[has_previous] & chosen[np.flatnonzero(has_previous) - 1]).sum(-1)  # [pairs, layers]
    layer_overlap = (chosen[:, :-1] & chosen[:, 1:]).sum(-1)  # [tokens, layer pairs]
    baseline = chance(meta.num_experts, k)

    window, window_per_layer = {}, {}
    for w in WINDOWS:
        rows = np.flatnonzero(choices.predecessors >= w)
        union = np.zeros((len(rows),) + chosen.shape[1:], dtype=bool)
        for back in range(1, w + 1):
            union |= chosen[rows - back]
        hit = (chosen[rows] & union).sum(-1) / k  # [rows, layers]
        window[str(w)] = float(hit.mean()) if hit.size else None
        window_per_layer[str(w)] = hit.mean(0).tolist() if hit.size else [None] * len(choices.layers)

    per_layer = {}
    for i, layer in enumerate(choices.layers):
        entry = {
            "consecutive_token": _pair_stats(token_overlap[:, i], k),
            "window": {w: values[i] for w, values in window_per_layer.items()},
        }
        if i + 1 < len(choices.layers):
            entry["consecutive_layer"] = _pair_stats(layer_overlap[:, i], k)
        per_layer[str(layer)] = entry

    popularity = np.zeros((len(choices.layers), meta.num_experts), dtype=np.int64)
    popularity[:] = chosen.sum(0)
    return {
        "model": meta.model,
        "decode_tokens": int(len(chosen)),
        "num_experts": meta.num_experts,
        "top_k": k,
        "consecutive_token": {**_pair_stats(token_overlap, k), **baseline, "pairs": int(token_overlap.size)},
        "consecutive_layer": {**_pair_stats(layer_overlap, k), **baseline, "pairs": int(layer_overlap.size)},
        "window": window,
        "window_chance": {str(w): 1 - (1 - k / meta.num_experts) ** w for w in WINDOWS},
        "per_layer": per_layer,
        "popularity": {str(layer): popularity[i].tolist() for i, layer in enumerate(choices.layers)},
    }


def reuse_distances(trace: Trace, cap: int = 32) -> np.ndarray:
    """Histogram of tokens between consecutive choices of one (layer, expert) within a request:
    index d holds how often an expert came back after d tokens (d = 1 .. cap, the last bin
    collecting everything beyond)."""
    choices = DecodeChoices.of(trace)
    chosen = choices.chosen
    last = np.full(chosen.shape[1:], -1, dtype=np.int64)
    histogram = np.zeros(cap + 1, dtype=np.int64)
    run_start = 0
    for t in range(len(chosen)):
        if choices.predecessors[t] == 0:
            last[:] = -1
            run_start = t
        seen = chosen[t] & (last >= run_start)
        gaps = np.minimum(t - last[seen], cap)
        histogram += np.bincount(gaps, minlength=cap + 1)
        last[chosen[t]] = t
    return histogram
