"""A one-row GPU expert queued eagerly against replayed from its slot's CUDA graph: host time, GPU time, bits.

    python benchmarks/slot_graphs_gpu.py --shape phi-3.5-moe --out slot-graphs-micro.json

On one layer of a full-size shape with synthesized weights, attached as the runtime attaches it
(``runtime.slot_graphs``): the host's time to queue one expert (``CachedExperts.queue_gpu_expert``,
as calibration times it; ``--repeats`` calls, no waiting), the GPU's time per expert (CUDA events
around ``--repeats`` queued back to back behind a wait), each way, the ways taking turns ``--rounds`` times; and
whether the replayed output equals the eager one bit for bit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from expertcache.runtime.loader import attach
from expertcache.runtime.synthetic import build_full_size
from expertcache.simulator.config import CacheConfig

SLEEP_CYCLES = 400_000_000
"""The GPU's wait before the timed experts: about 0.2 s at the H100's clock, longer than the host takes to queue them."""


def _queue_ms(runtime, module, x: torch.Tensor, slot: int, repeats: int) -> tuple[float, float]:
    """Host and GPU milliseconds per queued expert: the host's time to queue ``repeats`` of them,
    then the GPU's to run ``repeats`` queued behind a wait long enough for the host to queue them all."""
    torch.cuda.synchronize()
    stream = torch.cuda.current_stream()
    started = time.perf_counter()
    for _ in range(repeats):
        runtime.queue_gpu_expert(module, x, slot, stream)
    host = time.perf_counter() - started
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(SLEEP_CYCLES)
    start.record()
    for _ in range(repeats):
        runtime.queue_gpu_expert(module, x, slot, stream)
    end.record()
    torch.cuda.synchronize()
    return 1e3 * host / repeats, start.elapsed_time(end) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="phi-3.5-moe")
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    model, host, top_k = build_full_size(args.shape, 1)
    attach(model, host, CacheConfig(sets=1, ways=args.slots, policy="lru"), torch.device("cuda"), 1, None, top_k)
    runtime = model.expertcache
    layer = runtime.moe_layers[0]
    module, graphs, slot = runtime.layers[layer], runtime.slot_graphs, runtime.scratch_slot
    runtime.pool.fill(slot, host[layer][0])
    x = runtime.gpu_input(torch.randn(1, model.config.hidden_size, dtype=runtime.layout.dtype, device="cuda"))
    stream = torch.cuda.current_stream()
    replayed = runtime.queue_gpu_expert(module, x, slot, stream).clone()
    runtime.slot_graphs = None
    eager = runtime.queue_gpu_expert(module, x, slot, stream)
    samples: dict[str, list[tuple[float, float]]] = {"eager": [], "replayed": []}
    for _ in range(args.rounds + 1):  # the first round warms up
        for way in samples:
            runtime.slot_graphs = graphs if way == "replayed" else None
            samples[way].append(_queue_ms(runtime, module, x, slot, args.repeats))
    row = {"shape": args.shape, "machine": torch.cuda.get_device_name(), "bitwise_equal": bool(torch.equal(replayed, eager))}
    for way, rounds in samples.items():
        row[f"{way}_host_ms"] = statistics.median(host_ms for host_ms, _ in rounds[1:])
        row[f"{way}_gpu_ms"] = statistics.median(gpu_ms for _, gpu_ms in rounds[1:])
    print(json.dumps(row), flush=True)
    with open(args.out, "w") as handle:
        json.dump(row, handle, indent=1)


if __name__ == "__main__":
    main()
