"""Where a split expert's host time goes, by the GPU's share of it.

Calibration prices a split's host time besides its CPU share at 0.73-1.25 ms on the lent H100 hosts
(`split_launch_ms`), several times a whole GPU expert's. Its measurement lets the CPU finish before
the GPU's slices land, so part of it could be the host waiting to queue the CPU's activations from
pageable memory. This times ``CachedExperts.queue_split_expert`` on one Mixtral-shape expert at
several shares, its parts timed one by one (the slices' copies, the GPU's units, the CPU's share,
the activations' copy, the output projection), with the activations copied from pageable memory
and from pinned memory in turn, and the row read eagerly or, in the slot graphs' input, replayed
from the slot's split graphs (``SlotGraphs.replay_units``, ``replay_down``; session 19).

    python benchmarks/split_host_gpu.py --out split-host.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

from expertcache.runtime.cpu_threads import keep_cpu_threads_spinning

keep_cpu_threads_spinning()  # before torch loads OpenMP, as the CLI's model commands do

import torch  # noqa: E402

from expertcache.runtime import offload  # noqa: E402
from expertcache.runtime.loader import attach  # noqa: E402
from expertcache.runtime.synthetic import build_full_size  # noqa: E402
from expertcache.simulator.config import CacheConfig  # noqa: E402

PARTS = ("_copy_split", "_split_units", "_finish_split", "_to_device", "_cpu_share", "_queue_gpu_work")
SHARES = (0.34, 0.5, 0.7, 0.9)
SAMPLES = 12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="mixtral-8x7b")
    parser.add_argument("--layers", type=int, default=2, help="Layers built (one is timed).")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    model, host, top_k = build_full_size(args.shape, args.layers, device="cuda")
    device = torch.device("cuda")
    attach(model, host, CacheConfig(sets=1, ways=top_k, policy="lru"), device, 15, None, top_k)
    runtime = model.expertcache
    torch.set_num_threads(15)

    spent: dict[str, float] = {}
    experts_class = offload.CachedExperts

    def timed(name, method):
        def run(*a, **k):
            t = time.perf_counter()
            result = method(*a, **k)
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - t
            return result

        return run

    for name in PARTS:
        setattr(experts_class, name, timed(name, getattr(experts_class, name)))
    pinned = {"on": False}
    to_device = experts_class._to_device

    def staged_to_device(self, record, cpu_result, into=None):
        return to_device(self, record, cpu_result.pin_memory() if pinned["on"] else cpu_result, into)

    experts_class._to_device = staged_to_device

    module = runtime.layers[runtime.moe_layers[0]]
    eager = torch.randn(1, model.config.get_text_config().hidden_size, dtype=runtime.layout.dtype, device=device)
    rows_on_host = eager.cpu()
    experts = itertools.cycle(range(runtime.num_experts))
    results = []
    for staged, way in itertools.product((False, True, False, True), ("eager", "graphs")):
        pinned["on"] = staged
        rows = runtime.gpu_input(eager) if way == "graphs" else eager
        for share in SHARES:
            samples = []
            for i in range(SAMPLES + 1):  # the first one warms up
                torch.cuda.synchronize()
                spent.clear()
                t = time.perf_counter()
                cpu_s = runtime.queue_split_expert(module, runtime.moe_layers[0], next(experts), rows, rows_on_host, runtime.scratch_slot, share)
                host_s = time.perf_counter() - t
                torch.cuda.synchronize()
                if i:
                    samples.append({"host": host_s, "cpu": cpu_s, "done": time.perf_counter() - t, **spent})
            row = {"pinned": staged, "rows": way, "share": share} | {k: round(1e3 * statistics.median(s[k] for s in samples), 3) for k in samples[0]}
            print(json.dumps(row), flush=True)
            results.append(row)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
