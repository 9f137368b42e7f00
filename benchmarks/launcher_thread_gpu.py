"""Can a second host thread queue GPU work while the main thread computes a CPU expert?

A decode layer with CPU work spends host time queueing the GPU's experts and copies before its
CPU expert starts (about 0.6 ms a layer on the lent H100 host, BENCHMARKS.md session 14). Torch
releases Python's lock inside each operator, so a launcher thread could queue that work while the
main thread's operators run, unless the two threads wait on each other for the lock. This probe
times, on one machine: one CPU expert (the Phi-3.5-MoE or Mixtral shape, bf16, experts cycled
as decode reads them), the queueing of ``--launches`` small GPU operations with events on a copy
stream, both in turn on the main thread, and both at once (the GPU work on a launcher thread), at
the default switch interval and a short one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from expertcache.runtime.cpu_threads import keep_cpu_threads_spinning

keep_cpu_threads_spinning()

import torch  # noqa: E402

SHAPES = {"phi-3.5-moe": (4096, 6400), "mixtral-8x7b": (4096, 14336)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="phi-3.5-moe", choices=sorted(SHAPES))
    parser.add_argument("--threads", type=int, default=15)
    parser.add_argument("--launches", type=int, default=40, help="GPU operations queued per layer")
    parser.add_argument("--experts", type=int, default=8, help="host experts cycled through")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hidden, intermediate = SHAPES[args.shape]
    experts = [
        (torch.randn(2 * intermediate, hidden, dtype=torch.bfloat16), torch.randn(hidden, intermediate, dtype=torch.bfloat16))
        for _ in range(args.experts)
    ]
    x = torch.randn(1, hidden, dtype=torch.bfloat16)
    device = torch.device("cuda")
    small = torch.randn(1, hidden, dtype=torch.bfloat16, device=device)
    weight = torch.randn(256, hidden, dtype=torch.bfloat16, device=device)
    slot = torch.empty(1 << 20, dtype=torch.bfloat16, device=device)
    pinned = torch.randn(1 << 20, dtype=torch.bfloat16).pin_memory()
    copies = torch.cuda.Stream()
    turn = [0]

    def cpu_expert() -> None:
        gate_up, down = experts[turn[0] % len(experts)]
        turn[0] += 1
        gate, up = torch.nn.functional.linear(x, gate_up).chunk(2, dim=-1)
        torch.nn.functional.linear(torch.nn.functional.silu(gate) * up, down)

    def launches(stream: torch.cuda.Stream) -> None:
        with torch.cuda.stream(stream):
            for i in range(args.launches // 4):
                with torch.cuda.stream(copies):
                    slot[: 1 << 16].copy_(pinned[: 1 << 16], non_blocking=True)
                    landed = torch.cuda.Event()
                    landed.record(copies)
                stream.wait_event(landed)
                torch.nn.functional.linear(small, weight)

    stream = torch.cuda.current_stream()
    pool = ThreadPoolExecutor(max_workers=1)

    def timed(run) -> float:
        torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        return time.perf_counter() - started

    def together() -> None:
        queued = pool.submit(launches, stream)
        cpu_expert()
        queued.result()

    for _ in range(50):  # warm up every path
        cpu_expert(), launches(stream), together()
    rows = {}
    for interval in (sys.getswitchinterval(), 1e-4):
        sys.setswitchinterval(interval)
        samples = {"cpu": [], "launch": [], "in turn": [], "together": []}
        for _ in range(args.repeats):
            samples["cpu"].append(timed(cpu_expert))
            samples["launch"].append(timed(lambda: launches(stream)))
            samples["in turn"].append(timed(lambda: (launches(stream), cpu_expert())))
            samples["together"].append(timed(together))
        rows[f"switch interval {interval * 1e3:g} ms"] = {name: 1e3 * statistics.median(values) for name, values in samples.items()}
    torch.cuda.synchronize()
    result = {"shape": args.shape, "threads": args.threads, "launches": args.launches, "ms": rows}
    with open(args.out, "w") as out:
        json.dump(result, out, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
