"""How far apart repeated calibrations of the CPU expert land, sampled briefly or over a window.

    python benchmarks/calibration_spread_gpu.py --out calibration-spread.json

Builds the full Mixtral-8x7B shape with synthesized weights and measures the one-token CPU expert
(``calibrate.cpu_expert_ms``, every expert in turn, mean) again and again, each estimate from 32
samples or more spread over a window of seconds (0: back to back, about 0.15 s), the windows in
turn so that the machine's drift hits them alike. A
calibration is only as good as its agreement with the next one: the spread of each kind's
estimates is what a profile taken at one moment can be off by at another.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import torch

from expertcache.runtime.calibrate import cpu_expert_ms
from expertcache.runtime.loader import attach
from expertcache.runtime.synthetic import build_full_size
from expertcache.simulator.config import CacheConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="mixtral-8x7b")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--windows", default="0,1.5,4", help="Sampling windows in seconds, comma-separated.")
    parser.add_argument("--estimates", type=int, default=16, help="Estimates of each kind.")
    parser.add_argument("--out")
    args = parser.parse_args()
    model, host, top_k = build_full_size(args.shape, device="cuda")
    attach(model, host, CacheConfig(sets=1, ways=2), torch.device("cuda"), args.threads, None, top_k)
    cpu_expert_ms(model, args.threads, repeats=1, warm_up_s=2.0, window_s=0.0)
    windows = [float(w) for w in args.windows.split(",")]
    estimates: dict[str, list[float]] = {f"{w:g} s": [] for w in windows}
    for _ in range(args.estimates):
        for window in windows:
            estimates[f"{window:g} s"].append(cpu_expert_ms(model, args.threads, repeats=32, warm_up_s=0.0, window_s=window)[1])
    result = {"machine": f"{torch.cuda.get_device_name()}, {os.cpu_count()} cores, torch {torch.__version__}", "threads": args.threads,
              "estimates_ms": estimates,
              "summary": {kind: {"mean_ms": statistics.fmean(v), "stdev_ms": statistics.stdev(v), "min_ms": min(v), "max_ms": max(v),
                                 "max_over_min": max(v) / min(v)} for kind, v in estimates.items()}}  # fmt: skip
    print(json.dumps(result["summary"], indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
