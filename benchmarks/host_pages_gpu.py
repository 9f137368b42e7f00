"""Do transparent huge pages under the experts' pinned host memory make CPU experts faster or steadier?

A one-token CPU expert streams 352 MB of weights (Mixtral-8x7B shape): with 4 KiB pages that is
86,000 page translations per expert, with 2 MiB pages 168. This allocates the same experts both
ways (a numpy array, as ``pinned.host_rows`` does, and anonymous memory advised ``MADV_HUGEPAGE``
before it is first touched), pins both with ``cudaHostRegister`` as the runtime does, and times,
interleaved (A B A B, so drift in the machine's speed hits both alike): CPU experts cycling
through every expert as decode does, at several thread counts (median, 90th percentile and worst,
to see stragglers), the same under a concurrent copy, and pinned host-to-device copies:

    python benchmarks/host_pages_gpu.py --out host-pages.json

Answer on the lent H100 host (``results/host-pages-h100.json``, where the numpy variant is named
"4k"): numpy already advises huge pages for large arrays, so both variants came out huge-paged
(AnonHugePages grew 5.25 GiB for each) and the runtime's experts already sit on 2 MiB pages. What
the run shows is the CPU's own spread: identical measurements seconds apart differ up to 1.7x.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import time
import weakref

import numpy as np
import torch

from overlap_gpu import HIDDEN, INTERMEDIATE, cpu_expert

NUMEL = 3 * HIDDEN * INTERMEDIATE


def meminfo_kib(key: str) -> int:
    for line in open("/proc/meminfo"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def pinned_rows(experts: int, huge: bool) -> torch.Tensor:
    nbytes = experts * NUMEL * 2
    if huge:
        region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        region.madvise(mmap.MADV_HUGEPAGE)
        buffer = np.frombuffer(region, dtype=np.uint8)
    else:
        buffer = np.empty(nbytes, dtype=np.uint8)
    rows = torch.from_numpy(buffer).view(torch.bfloat16).view(experts, NUMEL)
    rows.fill_(0.01)  # first touch: the kernel picks the page size here
    address = buffer.ctypes.data
    status = int(torch.cuda.cudart().cudaHostRegister(address, nbytes, 1))
    assert status == 0, f"cudaHostRegister failed ({status})"
    weakref.finalize(buffer, lambda: torch.cuda.cudart().cudaHostUnregister(address))
    return rows


def cpu_times_ms(rows: torch.Tensor, threads: int, samples: int, slot: torch.Tensor | None, stream) -> list[float]:
    torch.set_num_threads(threads)
    x = torch.randn(1, HIDDEN, dtype=torch.bfloat16)
    until = time.perf_counter() + 1.0
    i = 0
    while time.perf_counter() < until:
        cpu_expert(rows[i % len(rows)], x)
        i += 1
    times = []
    for i in range(samples):
        if slot is not None:  # a copy of another expert under way, as the runtime's background copies are
            with torch.cuda.stream(stream):
                slot.copy_(rows[(i + len(rows) // 2) % len(rows)], non_blocking=True)
        started = time.perf_counter()
        cpu_expert(rows[i % len(rows)], x)
        times.append(1e3 * (time.perf_counter() - started))
        if slot is not None:
            stream.synchronize()
    return times


def copy_gbps(rows: torch.Tensor, slot: torch.Tensor, samples: int) -> float:
    times = []
    for i in range(samples):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        slot.copy_(rows[i % len(rows)], non_blocking=True)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return NUMEL * 2 / statistics.median(times) / 1e9


def summary(times: list[float]) -> dict:
    ordered = sorted(times)
    return {"median_ms": statistics.median(times), "p90_ms": ordered[int(0.9 * (len(ordered) - 1))], "max_ms": ordered[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=16, help="Experts per variant (352 MB each).")
    parser.add_argument("--threads", default="8,12,14,15,16")
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2, help="Interleaved rounds of A then B.")
    parser.add_argument("--out")
    args = parser.parse_args()
    result: dict = {"machine": f"{torch.cuda.get_device_name()}, {os.cpu_count()} cores, torch {torch.__version__}",
                    "thp_enabled": open("/sys/kernel/mm/transparent_hugepage/enabled").read().strip(),
                    "thp_defrag": open("/sys/kernel/mm/transparent_hugepage/defrag").read().strip(), "variants": {}}  # fmt: skip
    variants = {}
    for name, huge in (("numpy", False), ("madvised", True)):
        before, started = meminfo_kib("AnonHugePages"), time.perf_counter()
        variants[name] = pinned_rows(args.experts, huge)
        result["variants"][name] = {"alloc_touch_pin_s": time.perf_counter() - started,
                                    "anon_huge_pages_gib": (meminfo_kib("AnonHugePages") - before) / 2**20, "rounds": []}  # fmt: skip
        print(name, result["variants"][name], flush=True)
    slot = torch.empty(NUMEL, dtype=torch.bfloat16, device="cuda")
    stream = torch.cuda.Stream()
    for round_index in range(args.rounds):
        for name, rows in variants.items():
            measured = {"copy_gbps": copy_gbps(rows, slot, 16)}
            for threads in (int(t) for t in args.threads.split(",")):
                measured[f"cpu_{threads}t"] = summary(cpu_times_ms(rows, threads, args.samples, None, None))
            measured["cpu_15t_with_copy"] = summary(cpu_times_ms(rows, 15, args.samples, slot, stream))
            result["variants"][name]["rounds"].append(measured)
            print(round_index, name, json.dumps(measured), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
