"""A split's CPU share and a whole CPU expert, alone and in the conditions decode computes them in.

In the benches the runtime's split pace finds a split's CPU share taking more than its part of a
whole CPU expert, the more the smaller the expert: Mixtral-8x7B 0.8-1.1 times, Phi-3.5-MoE
1.25-1.63, OLMoE-1B-7B 1.65, Qwen3-30B-A3B 3.6. Back to back, alone, the share took its part
(``split_cpu_gpu.py``). That looks like a cost per CPU call that the small shares feel most.
This times, per kernel of ``runtime.cpu_kernel``, each kind of CPU work (a whole expert; a
split's units at a GPU share of 0.5, at one cut or cycling through eight, and its two products
alone) in four conditions:

- ``alone``: back to back;
- ``after_wait``: right after the host waited for about a millisecond of GPU work, as a decode
  layer's routing read does;
- ``beside_copy``: with the GPU's half of the expert being copied meanwhile, as a split's is;
- ``in_run``: both, and some twenty small kernels queued in between, as a split layer does.

    python benchmarks/split_share_conditions_gpu.py --out split-share-conditions.json
"""

from __future__ import annotations

from expertcache.runtime.cpu_threads import keep_cpu_threads_spinning

keep_cpu_threads_spinning()  # before torch loads OpenMP, as the CLI's model commands do

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from expertcache.runtime.cpu_kernel import cpu_products  # noqa: E402
from expertcache.runtime.experts import ExpertLayout, expert_ffn, find_experts_modules  # noqa: E402
from expertcache.runtime.split import Cut, units_out  # noqa: E402
from expertcache.runtime.synthetic import build_full_size  # noqa: E402
from expertcache.simulator.costs import ONE_ROW_KERNELS  # noqa: E402

SAMPLES = 40
GPU_WAIT_CYCLES = 1_500_000  # torch.cuda._sleep: about a millisecond on an H100
SMALL_KERNELS = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="phi-3.5-moe,olmoe-1b-7b,mixtral-8x7b")
    parser.add_argument("--threads", type=int, default=15)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for shape in args.shapes.split(","):
        model, host, _ = build_full_size(shape, 1, device="cuda")
        module = find_experts_modules(model)[0][2]
        layout = ExpertLayout.of(module)
        experts = next(iter(host.values()))
        rows = itertools.cycle(list(experts))
        hidden = model.config.hidden_size
        x = torch.randn(1, hidden, dtype=layout.dtype).pin_memory()
        slot = torch.empty(layout.numel, dtype=layout.dtype, device="cuda")
        scratch = torch.zeros(16, device="cuda")
        copy_stream = torch.cuda.Stream()
        half = Cut.of(layout, 0.5)
        cuts = [Cut.of(layout, share) for share in (0.40, 0.44, 0.48, 0.52, 0.56, 0.60, 0.64, 0.68)]
        cycling = itertools.cycle(cuts)
        works = {
            "whole": lambda r: expert_ffn(module, x, layout.views(r)),
            "share_0.5": lambda r: units_out(module, x, layout.views(r), half.units, half.intermediate),
            "share_cycling": lambda r: (lambda c: units_out(module, x, layout.views(r), c.units, c.intermediate))(next(cycling)),
            "share_products_only": lambda r: [torch.nn.functional.linear(x, layout.views(r)["gate_up_proj"][lo:hi])
                                             for lo, hi in ((half.units, half.intermediate),
                                                            (half.intermediate + half.units, 2 * half.intermediate))],
        }  # fmt: skip

        def before(condition: str, row: torch.Tensor) -> None:
            if condition in ("after_wait", "in_run"):
                torch.cuda._sleep(GPU_WAIT_CYCLES)
                torch.cuda.synchronize()
            if condition in ("beside_copy", "in_run"):
                with torch.cuda.stream(copy_stream):
                    for start, end in half.unit_ranges(layout, on_gpu=True) + half.down_ranges(layout):
                        slot[start:end].copy_(row[start:end], non_blocking=True)
            if condition == "in_run":
                for _ in range(SMALL_KERNELS):
                    scratch.add_(1)

        for kernel in ONE_ROW_KERNELS:
            for condition in ("alone", "after_wait", "beside_copy", "in_run"):
                row_out = {"shape": shape, "threads": args.threads, "kernel": kernel, "condition": condition}
                for name, work in works.items():
                    with cpu_products(kernel, 1):
                        for _ in range(4):
                            work(next(rows))
                        times = []
                        for _ in range(SAMPLES):
                            row = next(rows)
                            before(condition, row)
                            started = time.perf_counter()
                            work(row)
                            times.append(time.perf_counter() - started)
                            torch.cuda.synchronize()
                    row_out[f"{name}_ms"] = 1e3 * statistics.median(times)
                cpu_part = 1 - half.gpu_fraction(layout)
                row_out["share_over_part"] = row_out["share_0.5_ms"] / (cpu_part * row_out["whole_ms"])
                print(json.dumps(row_out), flush=True)
                results.append(row_out)
        del model, host, experts, rows
    with open(args.out, "w") as f:
        json.dump({"machine": torch.cuda.get_device_name(), "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()
