"""What a split's first matrix product at a new cut costs, on each side, against the same product again.

A split computes slices of an expert whose size depends on the cut (``runtime.split``), so its
products take up to ``CUT_STEPS`` shapes per side. The first split-heavy run of every fidelity
call measured 13-32 % slower than predicted, the runs after it not. This times, for cuts on
``CUT_STEPS`` steps of a full-size expert shape, the first one-row product of the CPU's units and of
the GPU's units, then the same product again:

    OMP_WAIT_POLICY=ACTIVE python benchmarks/first_shape_gpu.py --shape mixtral-8x7b --threads 15 --out first-shape.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from expertcache.runtime.split import CUT_STEPS
from expertcache.runtime.synthetic import full_size_config


def _ms(run, synchronize: bool) -> float:
    started = time.perf_counter()
    run()
    if synchronize:
        torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="mixtral-8x7b")
    parser.add_argument("--threads", type=int, default=15)
    parser.add_argument("--cuts", type=int, default=12, help="How many of the CUT_STEPS cuts to time.")
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = full_size_config(args.shape)
    hidden = config.hidden_size
    intermediate = getattr(config, "moe_intermediate_size", None) or config.intermediate_size
    step = intermediate // CUT_STEPS
    weights = {"cpu": torch.randn(intermediate, hidden, dtype=torch.bfloat16), "cuda": torch.randn(intermediate, hidden, dtype=torch.bfloat16, device="cuda")}
    rows = {device: torch.randn(1, hidden, dtype=torch.bfloat16, device=device) for device in weights}
    results = {}
    for device in weights:
        first, again = [], []
        for cut in range(1, args.cuts + 1):
            # as a split slices them: the GPU's units from the first, the CPU's up to the last
            units = weights[device][: cut * step] if device == "cuda" else weights[device][cut * step :]
            product = lambda: nn.functional.linear(rows[device], units)  # noqa: E731
            first.append(_ms(product, device == "cuda"))
            again.append(statistics.median(_ms(product, device == "cuda") for _ in range(5)))
        results[device] = {"first_ms": first, "again_ms": again}
        print(f"{device}: first product at a new cut {statistics.median(first):.2f} ms (median of {args.cuts}), again {statistics.median(again):.2f} ms")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"shape": args.shape, "threads": args.threads, "cut_steps": CUT_STEPS, **results}, f, indent=1)


if __name__ == "__main__":
    main()
