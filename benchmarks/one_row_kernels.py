"""A one-row CPU expert on oneDNN against torch's own kernel, per full-size shape and thread count.

    python benchmarks/one_row_kernels.py --shapes phi-3.5-moe,olmoe-1b-7b --threads 1,8,15 --device cuda --out F.json

``calibrate`` keeps the faster of the two per thread count (``runtime.cpu_kernel``). This shows
both, on one layer's host rows (pinned with ``--device cuda``): cycling through the layer's experts as
decode does, the kernels taking turns sample by sample, and re-reading one expert, which a large
last-level cache may hold (the lent H100 host's is 300 MB, two Phi-3.5-MoE experts). Runs on any
machine: ``--device cpu`` keeps the rows in ordinary memory.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time

from expertcache.runtime.cpu_threads import keep_cpu_threads_spinning

keep_cpu_threads_spinning()

import torch  # noqa: E402

from expertcache.runtime.cpu_kernel import cpu_products, one_row_kernel_means  # noqa: E402
from expertcache.runtime.experts import ExpertLayout, expert_ffn, find_experts_modules  # noqa: E402
from expertcache.runtime.synthetic import build_full_size  # noqa: E402
from expertcache.simulator.costs import ONE_ROW_KERNELS  # noqa: E402

SAMPLES = 48
WARM_UP_S = 1.0


def kernel_means_ms(run, rows) -> dict[str, float]:
    """Mean ms of ``run(row)`` per kernel, the kernels taking turns on successive rows of ``rows``
    (``cpu_kernel.one_row_kernel_means``, as calibration times them), after a warm-up on both."""
    until = time.perf_counter() + WARM_UP_S
    while time.perf_counter() < until:
        for kernel in ONE_ROW_KERNELS:
            with cpu_products(kernel, 1):
                run(next(rows))
    means = one_row_kernel_means(lambda: run(next(rows)), SAMPLES, 0.0)
    return {kernel: 1e3 * seconds for kernel, seconds in means.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="phi-3.5-moe,olmoe-1b-7b")
    parser.add_argument("--threads", default="1,8,15", help="Comma-separated thread counts.")
    parser.add_argument("--device", default="cuda", help="Where the model's dense part lives; cuda pins the host rows.")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    results = []
    for shape in args.shapes.split(","):
        model, host, _ = build_full_size(shape, 1, device=args.device)
        module = find_experts_modules(model)[0][2]
        layout = ExpertLayout.of(module)
        layer_rows = list(next(iter(host.values())))
        x = torch.randn(1, model.config.hidden_size, dtype=layout.dtype)
        run = lambda r: expert_ffn(module, x, layout.views(r))  # noqa: E731
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            row = {"shape": shape, "threads": threads, "expert_mb": layout.nbytes / 2**20, "experts_cycled": len(layer_rows),
                   "cycling_ms": kernel_means_ms(run, itertools.cycle(layer_rows)),
                   "one_expert_ms": kernel_means_ms(run, itertools.repeat(layer_rows[0]))}  # fmt: skip
            print(json.dumps(row), flush=True)
            results.append(row)
        del model, host
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "no GPU"
    with open(args.out, "w") as handle:
        json.dump({"machine": f"{gpu}; {_cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}", "rows": results}, handle, indent=1)


def _cpu_name() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "CPU")


if __name__ == "__main__":
    main()
