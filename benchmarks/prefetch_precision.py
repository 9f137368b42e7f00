"""Would a cross-layer prefetch from routing history pay? How often its guesses are used.

HybriMoE prefetches the experts it expects the next layers to choose, predicted by running their
routers on the current hidden state. Here routing exists only as traces (no hidden states, and the
benches force the trace's routing on synthesized weights), so the predictor that can be measured is
one learned from the routing itself: how often each expert of layer ``l + 1`` followed each expert
of layer ``l`` in the same token, counted online as decode goes. For every decode (token, layer) the
cache of the given configuration (the shared cache core) is as the replay left it; the top guesses
for the next layer that the cache does not hold are the copies a prefetch would start. Printed: the
share of those guesses the next layer used, the share of the next layer's misses they would have
caught, and the same for the naive guess (the next layer's choice for the previous token, by rank).

A prefetched expert costs a whole copy on the link (7 ms for Mixtral-8x7B on the lent H100), which
the layer's own misses also need; a guess used a third of the time saves a third of a miss.

    python benchmarks/prefetch_precision.py --trace ../shared/traces/mixtral-gsm8k.parquet --config 2x29:eta
"""

from __future__ import annotations

import argparse

import numpy as np

from expertcache.simulator.cache import ExpertCache
from expertcache.simulator.geometry import Geometry
from expertcache.traces.io import read_trace


def precision(path: str, sets: int, ways: int, policy: str, guesses: int) -> dict[str, float]:
    """Used share of the guesses and caught share of the next layer's misses, learned and naive."""
    trace = read_trace(path)
    meta, frame = trace.meta, trace.in_execution_order()
    layers, experts = meta.num_layers, meta.num_experts
    cache = ExpertCache(Geometry(sets, ways), policy, layers, experts, meta.moe_layers)
    follows = np.zeros((layers, experts, experts))  # [l, a, b]: b chosen at l + 1 in a token that chose a at l
    previous: dict[tuple[int, int], np.ndarray] = {}  # (request, layer) → the experts of its latest token
    counts = dict.fromkeys(["issued", "used", "naive_issued", "naive_used", "misses", "caught", "naive_caught"], 0)
    for step, ((request, _, phase), token) in enumerate(frame.groupby(["request", "position", "phase"], sort=False)):
        on_layer = [token.layer.to_numpy() == layer for layer in range(layers)]
        chosen = [token.expert.to_numpy()[rows] for rows in on_layer]
        for layer in range(layers):
            if phase == "decode" and layer + 1 < layers:
                absent = [e for e in range(experts) if cache.slot_of(layer + 1, e) < 0]
                learned = sorted(absent, key=lambda e: -follows[layer, chosen[layer], e].sum())[:guesses]
                naive = [e for e in previous.get((request, layer + 1), []) if e in absent][:guesses]
                needed = set(chosen[layer + 1].tolist())
                missed = needed.intersection(absent)
                counts["issued"] += len(learned)
                counts["used"] += len(needed.intersection(learned))
                counts["naive_issued"] += len(naive)
                counts["naive_used"] += len(needed.intersection(naive))
                counts["misses"] += len(missed)
                counts["caught"] += len(missed.intersection(learned))
                counts["naive_caught"] += len(missed.intersection(naive))
            cache.access_many(np.full(len(chosen[layer]), layer), chosen[layer], token.weight.to_numpy()[on_layer[layer]], step)
            if layer + 1 < layers:
                follows[layer][np.ix_(chosen[layer], chosen[layer + 1])] += 1
            previous[(request, layer)] = chosen[layer]
    return {
        "used": counts["used"] / max(counts["issued"], 1),
        "caught": counts["caught"] / max(counts["misses"], 1),
        "naive_used": counts["naive_used"] / max(counts["naive_issued"], 1),
        "naive_caught": counts["naive_caught"] / max(counts["misses"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", action="append", required=True, help="trace(s) to replay; repeat for several")
    parser.add_argument("--config", action="append", required=True, help="SETSxWAYS:POLICY, e.g. 2x29:eta; repeat for several")
    parser.add_argument("--guesses", type=int, default=1, help="experts guessed for the next layer, at most")
    args = parser.parse_args()
    for path in args.trace:
        for config in args.config:
            geometry, policy = config.split(":")
            sets, ways = (int(n) for n in geometry.split("x"))
            result = precision(path, sets, ways, policy, args.guesses)
            print(f"{path} {config}: learned guesses used {result['used']:.1%}, catching {result['caught']:.1%} of the next "
                  f"layer's misses; naive {result['naive_used']:.1%}, {result['naive_caught']:.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
