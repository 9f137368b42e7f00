"""The CPU's share of a split expert against the whole expert on the CPU, per full-size shape.

In the benches, runs that split lone misses spent more CPU time than the simulator priced, the
more so the smaller the expert (Mixtral 0.9-1.0x, Phi-3.5-MoE 1.8x, OLMoE 7.5x), while runs
without splits matched. This times, on the machine's CPU with the runtime's thread count and its
pinned host rows (cycling through the experts as decode does), one token through a whole expert
and through the CPU's units of cuts leaving the GPU 40, 60 and 80 % of the bytes:

    python benchmarks/split_cpu_gpu.py --out split-cpu.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import torch

from expertcache.runtime.experts import ExpertLayout, expert_ffn, find_experts_modules
from expertcache.runtime.split import Cut, units_out
from expertcache.runtime.synthetic import build_full_size

SAMPLES = 48


def mean_ms(run, rows) -> float:
    for _ in range(8):
        run(next(rows))
    times = []
    for _ in range(SAMPLES):
        row = next(rows)
        started = time.perf_counter()
        run(row)
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.fmean(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="mixtral-8x7b,phi-3.5-moe,olmoe-1b-7b")
    parser.add_argument("--threads", type=int, default=15)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for shape in args.shapes.split(","):
        model, host, _ = build_full_size(shape, 1, device="cuda")
        module = find_experts_modules(model)[0][2]
        layout = ExpertLayout.of(module)
        rows = itertools.cycle(list(next(iter(host.values()))))
        x = torch.randn(1, model.config.hidden_size, dtype=layout.dtype)
        row = {"shape": shape, "threads": args.threads, "expert_mb": layout.nbytes / 2**20,
               "whole_ms": mean_ms(lambda r: expert_ffn(module, x, layout.views(r)), rows)}  # fmt: skip
        intermediate = layout.shapes[layout.names.index("down_proj")][1]
        row["all_units_ms"] = mean_ms(lambda r: units_out(module, x, layout.views(r), 0, intermediate), rows)
        for share in (0.4, 0.6, 0.8):
            cut = Cut.of(layout, share)
            row[f"cpu_units_at_gpu_share_{share}_ms"] = mean_ms(lambda r: units_out(module, x, layout.views(r), cut.units, cut.intermediate), rows)
            row[f"cpu_bytes_at_gpu_share_{share}"] = 2 * (cut.intermediate - cut.units) / (3 * cut.intermediate)
        print(json.dumps(row), flush=True)
        results.append(row)
        del model, host
    with open(args.out, "w") as f:
        json.dump({"machine": torch.cuda.get_device_name(), "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()
