"""How much the peer ratios owe to routing: each bench shape priced on routing as local as real Mixtral's.

The Phi-3.5-MoE and OLMoE benches run the synthesized models' own random routers, which hit the
cache 79–95 % of the time at their budgets: on-demand fetching then has few misses to lose time on.
No real routing of those models exists here. This fits the synthetic generator's two knobs
(``traces.synthetic``: how often a token keeps each of the previous token's experts, how skewed a
layer's expert popularity is) to the reuse of the real Mixtral-8x7B traces (consecutive-token
reuse, and reuse within the last 2 and 4 tokens), draws routing of that character for each shape,
and prices expertcache's best configuration and the peers on it with the profile each shape's
latest bench calibrated on the lent H100, and the chosen geometry again with Belady's replacement
(which knows the future): what no replacement policy can beat. Simulator only; no GPU.

    python benchmarks/routing_locality.py --traces ../shared/traces/mixtral-gsm8k.parquet ../shared/traces/mixtral-humaneval.parquet \\
        --bench phi-3.5-moe:24GiB:benchmarks/results/bench-phi-h100-run7.json \\
        --bench olmoe-1b-7b:4GiB:benchmarks/results/bench-olmoe-h100-run5.json \\
        --bench mixtral-8x7b:24GiB:benchmarks/results/bench-mixtral-h100-run12.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from expertcache.analysis.reuse import reuse_numbers
from expertcache.runtime.loader import plan_memory
from expertcache.runtime.synthetic import full_size_config
from expertcache.simulator.config import CacheConfig
from expertcache.simulator.costs import Profile
from expertcache.simulator.engine import ReplayInput, simulate
from expertcache.simulator.sweep import best_config, rank, run_sweep, runnable_candidates
from expertcache.traces.io import Trace, read_trace
from expertcache.traces.synthetic import synthetic_trace
from expertcache.units import parse_bytes

STICKINESS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
SKEW = (0.1, 0.25, 0.5, 1.0)
MAX_TOKENS = 16 + 32 + 8
"""The bench's prompt and new tokens plus slack, as its memory plan counts them."""


def locality(trace: Trace) -> np.ndarray:
    """Consecutive-token reuse and reuse within the last 2 and 4 tokens (docs/analysis.md)."""
    numbers = reuse_numbers(trace)
    return np.array([numbers["consecutive_token"]["fraction"], numbers["window"]["2"], numbers["window"]["4"]])


def fit(target: np.ndarray, tokens: int) -> tuple[float, float, np.ndarray]:
    """The generator's (stickiness, skew) whose Mixtral-shaped routing comes closest to ``target``."""
    scored = []
    for stickiness, skew in itertools.product(STICKINESS, SKEW):
        reached = locality(synthetic_trace(tokens, stickiness=stickiness, skew=skew, requests=2))
        scored.append((float(np.sum((reached - target) ** 2)), stickiness, skew, reached))
    _, stickiness, skew, reached = min(scored, key=lambda entry: entry[0])
    return stickiness, skew, reached


def price(shape: str, budget: str, bench: Path, stickiness: float, skew: float, tokens: int, workdir: Path) -> dict:
    """expertcache's best configuration and each peer, priced on routing of the fitted character."""
    result = json.loads(bench.read_text())
    profile = Profile(**result["profile"])
    threads = max(profile.thread_counts)
    config = full_size_config(shape)
    slots = plan_memory(config, parse_bytes(budget), MAX_TOKENS, torch.bfloat16).slots
    experts = getattr(config, "num_local_experts", None) or config.num_experts
    top_k = config.num_experts_per_tok
    trace = synthetic_trace(tokens, num_layers=config.num_hidden_layers, num_experts=experts, top_k=top_k, requests=2,
                            stickiness=stickiness, skew=skew, expert_bytes=profile.expert_bytes)  # fmt: skip
    path = trace.write(workdir / f"{shape}.parquet")
    chosen = best_config(rank(run_sweep([path], runnable_candidates(slots, top_k, [threads]), profile, executor="serial")), None)
    replay = ReplayInput.from_trace(read_trace(path))
    ours = simulate(replay, chosen.geometry, chosen.policy, profile, threads)
    oracle = simulate(replay, chosen.geometry, "belady", profile, threads)  # no replacement policy does better
    peers = {placement: simulate(replay, CacheConfig(sets=1, ways=slots).geometry, "lru", profile, threads, placement=placement)
             for placement in ("fetch", "static", "cpu")}  # fmt: skip
    rows = {row["system"]: row for row in result["rows"] if "hit_rate" in row}
    return {
        "shape": shape, "budget": budget, "slots": slots, "chosen": f"{chosen.policy} {chosen.sets} × {chosen.ways}",
        "hit_rate": ours.hit_rate, "bench_hit_rate": rows["expertcache"]["hit_rate"],
        "ratios": {p: ours.tokens_per_s / r.tokens_per_s for p, r in peers.items()},
        "oracle_hit_rate": oracle.hit_rate, "oracle_over_fetch": oracle.tokens_per_s / peers["fetch"].tokens_per_s,
        "bench": {key: {p: rows["expertcache"][key] / rows[p][key] for p in peers} for key in ("predicted_tokens_per_s", "decode_tokens_per_s")},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", nargs="+", required=True, help="Real routing whose locality to match.")
    parser.add_argument("--bench", action="append", required=True, help="SHAPE:BUDGET:bench.json (the profile and measured rows to use).")
    parser.add_argument("--tokens", type=int, default=128, help="Decode tokens per request of the drawn routing.")
    args = parser.parse_args()

    target = np.mean([locality(read_trace(path)) for path in args.traces], axis=0)
    stickiness, skew, reached = fit(target, args.tokens)
    print(f"real reuse (consecutive, last 2, last 4 tokens): {np.round(target, 3).tolist()}; "
          f"fitted stickiness {stickiness}, skew {skew}: {np.round(reached, 3).tolist()}\n")  # fmt: skip
    print("expertcache over each peer, predicted on the drawn routing (on the bench's own routing: predicted / measured)\n")
    print("| shape | budget (slots) | expertcache's choice | hit rate: drawn / bench | over fetch | over static | over all-CPU "
          "| its geometry with Belady's replacement: hit rate, over fetch |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.bench:
            shape, budget, bench = spec.split(":", 2)
            row = price(shape, budget, Path(bench), stickiness, skew, args.tokens, Path(tmp))
            bench_ratios = row["bench"]
            cells = [f"{row['ratios'][p]:.2f}× ({bench_ratios['predicted_tokens_per_s'][p]:.2f}× / {bench_ratios['decode_tokens_per_s'][p]:.2f}×)"
                     for p in ("fetch", "static", "cpu")]  # fmt: skip
            oracle = f"{row['oracle_hit_rate']:.0%}, {row['oracle_over_fetch']:.2f}×"
            print(f"| {shape} | {budget} ({row['slots']}) | {row['chosen']} | {row['hit_rate']:.0%} / {row['bench_hit_rate']:.0%} | "
                  + " | ".join(cells) + f" | {oracle} |")  # fmt: skip


if __name__ == "__main__":
    main()
