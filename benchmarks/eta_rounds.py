"""What the interleaved A/B scripts share: one round's run of a cache, and the rows kept as JSON.

``split_ab_gpu.py``, ``pass_barrier_gpu.py``, ``layer_kinds_gpu.py`` and ``runtime_switch_ab_gpu.py``
each run the same `eta` cache on a shortened full-size shape under two variants, alternately, in one process;
``decode_speed_gpu.py`` runs one configuration under one version of the runtime per process. Round 0
is a warm-up of one request.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch

from expertcache.runtime.forced import TraceRouting
from expertcache.runtime.loader import attach
from expertcache.runtime.offload import CachedExperts
from expertcache.simulator.config import CacheConfig
from expertcache.simulator.costs import Profile
from expertcache.traces.io import Trace


def add_round_options(parser: argparse.ArgumentParser) -> None:
    """The options every interleaved A/B script takes: the shortened model, the cache, the rounds, the output."""
    parser.add_argument("--shape", default="mixtral-8x7b")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--slots", type=int, default=14)
    parser.add_argument("--threads", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2, help="Measured rounds after the warm-up round.")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--out", required=True)


def eta_cache(slots: int, ways: int = 1) -> CacheConfig:
    """The A/B scripts' cache: `eta` over ``slots`` sets of ``ways`` ways (one, unless a script asks)."""
    return CacheConfig(sets=slots, ways=ways, policy="eta")


def run_round(model, host: dict, top_k: int, config: CacheConfig, threads: int, profile: Profile | None, trace: Trace | None,
              prompts: torch.Tensor, new_tokens: int, warm_up: bool, device: torch.device = torch.device("cuda"),
              placement: str = "cache", adjust: Callable[[CachedExperts], None] | None = None) -> dict:  # fmt: skip
    """Attach ``config`` (as ``placement``), let ``adjust`` set the fresh runtime's switches, decode
    the prompts (only the first when ``warm_up``) with routing forced from ``trace`` when given,
    and return the runtime's counters."""
    attach(model, host, config, device, threads, profile, top_k, placement=placement)
    runtime = model.expertcache
    if adjust is not None:
        adjust(runtime)
    if trace is not None:
        runtime.routing = TraceRouting(trace, runtime.moe_layers, runtime.num_experts, top_k)
    for request in range(1 if warm_up else len(prompts)):
        runtime.begin_request(request)
        with torch.inference_mode():
            model.generate(prompts[request : request + 1].to(device), max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    runtime.end_pass()
    runtime.drain()
    stats = runtime.stats.summary()
    del model.expertcache
    return stats


def keep_row(rows: list[dict], row: dict, out: str) -> None:
    """Print ``row``, add it to ``rows`` and rewrite ``out`` with all of them (a run cut short keeps its rows)."""
    print(json.dumps(row), flush=True)
    rows.append(row)
    with open(out, "w") as handle:
        json.dump(rows, handle, indent=1)
