"""Why decode's CPU experts run faster than calibration times them: the order and the rhythm.

On the lent H100 hosts, three device calls of session 11 computed their one-token Mixtral CPU
experts in 6.57-6.61 ms on average inside runs (layers with two CPU experts), while calibration
timed the same expert, on the same host and thread count, at 7.03-8.19 ms, and the spot checks of
fidelity runs 16-17 (32 experts back to back) at a median of 6.97-7.02. Calibration reads every
expert in turn, back to back (``calibrate._every_expert``); decode reads the experts its routing
picks, one or two at a time, between the GPU's work. This times the same CPU expert in both
orders and in bursts of one or two separated by a busy host gap, the variants taking turns for
several rounds so that the host's drift hits them alike; the variant that reads like decode is the
one calibration should time.

    python benchmarks/cpu_rhythm_gpu.py --trace .device/traces/mixtral-gsm8k.parquet --out cpu-rhythm.json

``--device cpu --layers 1 --threads 2 --experts 8 --rounds 1`` runs it without a GPU, as a smoke test
(3 GB of host memory).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Iterator

from expertcache.runtime.cpu_threads import keep_cpu_threads_spinning

keep_cpu_threads_spinning()  # before torch loads OpenMP, as the CLI's model commands do

import numpy as np
import torch

from expertcache.runtime.calibrate import _every_expert
from expertcache.runtime.experts import expert_ffn
from expertcache.runtime.forced import TraceRouting
from expertcache.runtime.loader import attach
from expertcache.runtime.synthetic import build_full_size
from expertcache.simulator.config import CacheConfig
from expertcache.traces.io import read_trace

BURSTS = (1, 2)
"""CPU experts back to back before a gap: a layer with one miss on the CPU, or with two."""


def routed_experts(runtime, trace_path: str) -> Iterator[torch.Tensor]:
    """Host rows in the order decode's routing reads them: each token's layers in turn, each
    layer's chosen experts (the trace's first MoE layers, as many as the model has)."""
    trace = read_trace(trace_path)
    routing = TraceRouting(trace, runtime.moe_layers, runtime.num_experts, runtime.top_k)
    order = [
        runtime.host[layer][int(expert)]
        for token in range(routing.tokens)
        for i, layer in enumerate(runtime.moe_layers)
        for expert in routing.experts[token, i]
    ]
    return itertools.cycle(order)


def timed_ms(run, rows: Iterator[torch.Tensor], experts: int, burst: int, gap_s: float) -> list[float]:
    """Milliseconds of each of ``experts`` CPU experts, ``burst`` back to back, then the host busy
    for ``gap_s`` (as it is launching and waiting for the GPU between layers)."""
    times = []
    while len(times) < experts:
        for _ in range(burst):
            row = next(rows)
            started = time.perf_counter()
            run(row)
            times.append(1e3 * (time.perf_counter() - started))
        until = time.perf_counter() + gap_s
        while time.perf_counter() < until:
            pass
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="mixtral-8x7b")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers built (their experts are what is read)")
    parser.add_argument("--trace", required=True, help="routing whose order decode reads experts in")
    parser.add_argument("--threads", type=int, default=15)
    parser.add_argument("--gaps-ms", default="0,1.5,3", help="host gaps between bursts, comma-separated")
    parser.add_argument("--experts", type=int, default=48, help="CPU experts timed per variant and round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    model, host, top_k = build_full_size(args.shape, args.layers, device=args.device)
    attach(model, host, CacheConfig(sets=1, ways=top_k), device, args.threads, None, top_k)  # torch computes on args.threads from here
    runtime = model.expertcache
    module = runtime.layers[runtime.moe_layers[0]]
    x = torch.randn(1, model.config.hidden_size, dtype=runtime.layout.dtype)
    run = lambda row: expert_ffn(module, x, runtime.layout.views(row))  # noqa: E731
    orders = {"every expert in turn": _every_expert(runtime), "decode's routing": routed_experts(runtime, args.trace)}
    gaps = [float(g) / 1e3 for g in args.gaps_ms.split(",")]
    variants = [(order, burst, gap) for order in orders for burst in BURSTS for gap in gaps]
    for _ in range(args.experts):  # warm-up
        run(next(orders["every expert in turn"]))
    samples: dict[tuple, list[list[float]]] = {variant: [] for variant in variants}
    for round_ in range(args.rounds):
        for index in np.random.default_rng(round_).permutation(len(variants)):
            order, burst, gap = variants[index]
            samples[variants[index]].append(timed_ms(run, orders[order], args.experts, burst, gap))
    rows = []
    for (order, burst, gap), rounds in samples.items():
        every = [ms for times in rounds for ms in times]  # decode pays the mean; the median shows the usual speed
        means = [statistics.fmean(times) for times in rounds]
        rows.append({"order": order, "burst": burst, "gap_ms": 1e3 * gap, "mean_ms": statistics.fmean(every),
                     "median_ms": statistics.median(every), "round_means_ms": means, "samples_ms": every})  # fmt: skip
        print(f"{order:<22} burst {burst}  gap {1e3 * gap:4.1f} ms: mean {rows[-1]['mean_ms']:6.2f}, median {rows[-1]['median_ms']:6.2f} "
              f"ms per expert; round means {min(means):.2f}-{max(means):.2f}")  # fmt: skip
    machine = torch.cuda.get_device_name() if device.type == "cuda" else "CPU only"
    with open(args.out, "w") as f:
        json.dump({"machine": machine, "shape": args.shape, "threads": args.threads, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
