"""How much a host-to-device copy and a CPU expert slow each other down when they overlap.

expertcache's split of a layer's misses runs one expert on the CPU while another is copied to the
GPU; both read host memory. The profile measures the CPU's slowdown under copies; this measures
both sides, for one Mixtral-8x7B-shaped bf16 expert (352 MB), alone and together, and the case of
a miss computed on the CPU while its own rows are copied into the cache (the same expert read by
both at once):

    python benchmarks/overlap_gpu.py --threads 15 --out overlap.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from expertcache.runtime.pinned import host_rows

HIDDEN, INTERMEDIATE = 4096, 14336


def cpu_expert(rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    gate_up = rows[: 2 * INTERMEDIATE * HIDDEN].view(2 * INTERMEDIATE, HIDDEN)
    down = rows[2 * INTERMEDIATE * HIDDEN :].view(HIDDEN, INTERMEDIATE)
    gate, up = torch.nn.functional.linear(x, gate_up).chunk(2, dim=-1)
    return torch.nn.functional.linear(torch.nn.functional.silu(gate) * up, down)


def timed_copy(slot: torch.Tensor, row: torch.Tensor, stream: torch.cuda.Stream) -> tuple[torch.cuda.Event, torch.cuda.Event]:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.cuda.stream(stream):
        start.record(stream)
        slot.copy_(row, non_blocking=True)
        end.record(stream)
    return start, end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    numel = 3 * HIDDEN * INTERMEDIATE
    rows = host_rows(4, numel, torch.bfloat16, pin=True)
    rows.normal_()
    slot = torch.empty(numel, dtype=torch.bfloat16, device="cuda")
    stream = torch.cuda.Stream()
    x = torch.randn(1, HIDDEN, dtype=torch.bfloat16)
    until = time.perf_counter() + 2.0
    while time.perf_counter() < until:  # warm the thread pool and the copy path
        cpu_expert(rows[0], x)
        timed_copy(slot, rows[1], stream)
    torch.cuda.synchronize()

    alone_cpu, alone_copy, both_cpu, both_copy, same_cpu, same_copy = [], [], [], [], [], []
    for i in range(args.repeats):
        started = time.perf_counter()
        cpu_expert(rows[i % 2], x)
        alone_cpu.append(time.perf_counter() - started)
        start, end = timed_copy(slot, rows[2 + i % 2], stream)
        torch.cuda.synchronize()
        alone_copy.append(start.elapsed_time(end) / 1e3)
        start, end = timed_copy(slot, rows[2 + i % 2], stream)
        started = time.perf_counter()
        cpu_expert(rows[i % 2], x)
        both_cpu.append(time.perf_counter() - started)
        torch.cuda.synchronize()
        both_copy.append(start.elapsed_time(end) / 1e3)
        start, end = timed_copy(slot, rows[i % 2], stream)
        started = time.perf_counter()
        cpu_expert(rows[i % 2], x)
        same_cpu.append(time.perf_counter() - started)
        torch.cuda.synchronize()
        same_copy.append(start.elapsed_time(end) / 1e3)
    result = {
        "machine": f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.threads} threads",
        "expert_mb": numel * 2 / 1e6,
        **{name: 1e3 * statistics.median(values) for name, values in
           [("cpu_alone_ms", alone_cpu), ("copy_alone_ms", alone_copy), ("cpu_with_copy_ms", both_cpu), ("copy_with_cpu_ms", both_copy),
            ("cpu_with_own_copy_ms", same_cpu), ("own_copy_with_cpu_ms", same_copy)]},
    }  # fmt: skip
    result["cpu_slowdown"] = result["cpu_with_copy_ms"] / result["cpu_alone_ms"]
    result["copy_slowdown"] = result["copy_with_cpu_ms"] / result["copy_alone_ms"]
    result["cpu_slowdown_own_copy"] = result["cpu_with_own_copy_ms"] / result["cpu_alone_ms"]
    result["own_copy_slowdown"] = result["own_copy_with_cpu_ms"] / result["copy_alone_ms"]
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
