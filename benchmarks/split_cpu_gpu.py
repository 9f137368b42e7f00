"""The CPU's share of a split expert against the whole expert on the CPU, per full-size shape.

In the benches, runs that split lone misses spent more CPU time than the simulator priced, the
more so the smaller the expert (Mixtral 0.9-1.0x, Phi-3.5-MoE 1.8x, OLMoE 7.5x), while runs
without splits matched. This times, on the machine's CPU with the runtime's thread count and its
pinned host rows (cycling through the experts as decode does), one token through a whole expert
and through the CPU's units of cuts leaving the GPU 40, 60 and 80 % of the bytes:

    python benchmarks/split_cpu_gpu.py --out split-cpu.json

With ``--conditions`` it times instead, per kernel of ``runtime.cpu_kernel``, a whole expert, a
split's units at a GPU share of 0.5 (at one cut, and cycling through eight) and of 0.7, and the two
products at 0.5 alone, in the conditions decode computes them in:

- ``alone``: back to back;
- ``after_wait``: right after the host waited for about a millisecond of GPU work, as a decode
  layer's routing read does;
- ``beside_copy``: with the GPU's half of the expert being copied meanwhile, as a split's is;
- ``in_run``: both, and twenty small kernels queued in between, as a split layer does;
- ``beside_own_copy``: with the bytes the CPU reads being copied meanwhile too, behind the GPU's half,
  as a split the cache keeps has its CPU's slices copied (a whole expert: itself, as a kept CPU miss is).

    python benchmarks/split_cpu_gpu.py --conditions --shapes phi-3.5-moe,olmoe-1b-7b,mixtral-8x7b --out F

The runs' split pace found Phi-3.5-MoE's shares at 1.2-1.8 times their part of a whole CPU expert,
Mixtral-8x7B's at 0.8-1.1 (BENCHMARKS.md, session 25). OpenMP's team spins between products here, as
in every command that runs a model; ``split-cpu-h100.json`` (session 7) was measured before it did.
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

SAMPLES = 48
CONDITION_SAMPLES = 40
GPU_WAIT_CYCLES = 1_500_000  # torch.cuda._sleep: about a millisecond on an H100
SMALL_KERNELS = 20
CONDITIONS = ("alone", "after_wait", "beside_copy", "in_run", "beside_own_copy")


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


def by_cut(shape: str, threads: int, module, layout: ExpertLayout, rows, x: torch.Tensor) -> list[dict]:
    """The whole expert, every unit, and the CPU's units at GPU shares of 0.4, 0.6 and 0.8: mean ms."""
    row = {"shape": shape, "threads": threads, "expert_mb": layout.nbytes / 2**20,
           "whole_ms": mean_ms(lambda r: expert_ffn(module, x, layout.views(r)), rows)}  # fmt: skip
    intermediate = layout.shapes[layout.names.index("down_proj")][1]
    row["all_units_ms"] = mean_ms(lambda r: units_out(module, x, layout.views(r), 0, intermediate), rows)
    for share in (0.4, 0.6, 0.8):
        cut = Cut.of(layout, share)
        row[f"cpu_units_at_gpu_share_{share}_ms"] = mean_ms(lambda r: units_out(module, x, layout.views(r), cut.units, cut.intermediate), rows)
        row[f"cpu_bytes_at_gpu_share_{share}"] = 2 * (cut.intermediate - cut.units) / (3 * cut.intermediate)
    return [row]


def by_condition(shape: str, threads: int, module, layout: ExpertLayout, rows, x: torch.Tensor) -> list[dict]:
    """Per kernel and condition, median ms of each kind of CPU work, and the share over its part."""
    x = x.pin_memory()
    slot = torch.empty(layout.numel, dtype=layout.dtype, device="cuda")
    scratch = torch.zeros(16, device="cuda")
    copy_stream = torch.cuda.Stream()
    half, most = Cut.of(layout, 0.5), Cut.of(layout, 0.7)  # decode's splits mostly leave the GPU 0.65-0.75
    cycling = itertools.cycle([Cut.of(layout, share) for share in (0.40, 0.44, 0.48, 0.52, 0.56, 0.60, 0.64, 0.68)])
    works = {
        "whole": lambda r: expert_ffn(module, x, layout.views(r)),
        "share_0.5": lambda r: units_out(module, x, layout.views(r), half.units, half.intermediate),
        "share_0.7": lambda r: units_out(module, x, layout.views(r), most.units, most.intermediate),
        "share_cycling": lambda r: (lambda c: units_out(module, x, layout.views(r), c.units, c.intermediate))(next(cycling)),
        "share_products_only": lambda r: [torch.nn.functional.linear(x, layout.views(r)["gate_up_proj"][lo:hi])
                                         for lo, hi in ((half.units, half.intermediate),
                                                        (half.intermediate + half.units, 2 * half.intermediate))],
    }  # fmt: skip

    def prepare(condition: str, name: str, row: torch.Tensor) -> None:
        if condition in ("after_wait", "in_run"):
            torch.cuda._sleep(GPU_WAIT_CYCLES)
            torch.cuda.synchronize()
        if condition in ("beside_copy", "in_run", "beside_own_copy"):
            ranges = half.unit_ranges(layout, on_gpu=True) + half.down_ranges(layout)
            if condition == "beside_own_copy":
                ranges = [(0, layout.numel)] if name == "whole" else ranges + half.unit_ranges(layout, on_gpu=False)
            with torch.cuda.stream(copy_stream):
                for start, end in ranges:
                    slot[start:end].copy_(row[start:end], non_blocking=True)
        if condition == "in_run":
            for _ in range(SMALL_KERNELS):
                scratch.add_(1)

    results = []
    for kernel in ONE_ROW_KERNELS:
        for condition in CONDITIONS:
            result = {"shape": shape, "threads": threads, "kernel": kernel, "condition": condition}
            for name, work in works.items():
                with cpu_products(kernel, 1):
                    for _ in range(4):
                        work(next(rows))
                    times = []
                    for _ in range(CONDITION_SAMPLES):
                        row = next(rows)
                        prepare(condition, name, row)
                        started = time.perf_counter()
                        work(row)
                        times.append(time.perf_counter() - started)
                        torch.cuda.synchronize()
                result[f"{name}_ms"] = 1e3 * statistics.median(times)
            for cut, name in ((half, "0.5"), (most, "0.7")):
                result[f"share_{name}_over_part"] = result[f"share_{name}_ms"] / ((1 - cut.gpu_fraction(layout)) * result["whole_ms"])
            results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="mixtral-8x7b,phi-3.5-moe,olmoe-1b-7b")
    parser.add_argument("--threads", type=int, default=15)
    parser.add_argument("--conditions", action="store_true", help="time in decode's conditions, per kernel, instead of by cut")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    measure = by_condition if args.conditions else by_cut
    results = []
    for shape in args.shapes.split(","):
        model, host, _ = build_full_size(shape, 1, device="cuda")
        module = find_experts_modules(model)[0][2]
        layout = ExpertLayout.of(module)
        rows = itertools.cycle(list(next(iter(host.values()))))
        x = torch.randn(1, model.config.hidden_size, dtype=layout.dtype)
        for row in measure(shape, args.threads, module, layout, rows, x):
            print(json.dumps(row), flush=True)
            results.append(row)
        del model, host, rows
    with open(args.out, "w") as f:
        json.dump({"machine": torch.cuda.get_device_name(), "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()
