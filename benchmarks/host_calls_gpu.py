"""What each CUDA call a decode layer makes costs the host, one by one.

A split layer's host time besides its CPU share is about 0.5 ms on the lent H100 hosts (BENCHMARKS.md,
sessions 19-23), some forty calls into torch's CUDA API at 10-30 µs each. This times each kind of call
the runtime makes, alone, in a loop with the OpenMP team spinning as the CLI's model commands keep it:
the stream and event calls of ``SlotPool``, copies into a slot, a graph replay, the small kernels that
add a layer's outputs, and the reads of a layer's routing. Medians in µs of host time per call.

    python benchmarks/host_calls_gpu.py --out host-calls.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from expertcache.runtime.cpu_threads import keep_cpu_threads_spinning

keep_cpu_threads_spinning()

import numpy as np  # noqa: E402
import torch  # noqa: E402

CALLS = 400
SYNC_EVERY = 10  # calls between two waits for the GPU, outside the timed calls: no queue grows long


def timed(work: Callable[[], object], calls: int = CALLS, sync: bool = True) -> float:
    """Median host µs of one ``work()``, the GPU drained every ``SYNC_EVERY`` calls."""
    samples = []
    for i in range(calls):
        if sync and i % SYNC_EVERY == 0:
            torch.cuda.synchronize()
        started = time.perf_counter()
        work()
        samples.append(time.perf_counter() - started)
    torch.cuda.synchronize()
    return round(1e6 * statistics.median(samples[SYNC_EVERY:]), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=15)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda")
    torch.ones(1, device=device) @ torch.ones(1, device=device)  # context and cuBLAS up
    torch.ones(64, 64) @ torch.ones(64, 64)  # the OpenMP team up, spinning from here
    side = torch.cuda.Stream(device)
    compute = torch.cuda.current_stream(device)
    slice_numel = 4096 * 6400 // 2  # a sixth of a Phi-3.5-MoE expert: a split's GPU units
    host_row = torch.empty(slice_numel, dtype=torch.bfloat16).pin_memory()
    slot = torch.empty(slice_numel, dtype=torch.bfloat16, device=device)
    small_pinned = torch.zeros(3200, dtype=torch.bfloat16).pin_memory()
    small_pageable = torch.zeros(3200, dtype=torch.bfloat16)
    small_gpu = torch.zeros(3200, dtype=torch.bfloat16, device=device)
    hidden = torch.randn(1, 4096, dtype=torch.bfloat16, device=device)
    index = torch.randint(0, 16, (1, 2), device=device)
    weights = torch.rand(1, 2, dtype=torch.bfloat16, device=device)
    outputs = [torch.randn(1, 4096, dtype=torch.bfloat16, device=device) for _ in range(2)]
    row_weights = torch.rand(2, dtype=torch.bfloat16, device=device)
    zeros = torch.zeros(2, dtype=torch.long, device=device)
    graph = torch.cuda.CUDAGraph()
    side.wait_stream(compute)
    with torch.cuda.stream(side):
        out = torch.empty_like(hidden)
        graph.capture_begin()
        out.copy_(hidden * 2)
        graph.capture_end()
    compute.wait_stream(side)
    event = torch.cuda.Event()
    event.record()
    timing = torch.cuda.Event(enable_timing=True)

    def in_side_stream():
        with torch.cuda.stream(side):
            pass

    def combine():
        weighted = torch.cat(outputs) * row_weights[:, None]
        return torch.zeros_like(hidden).index_add_(0, zeros, weighted)

    def routing():
        return index.cpu().numpy(), weights.detach().float().cpu().numpy()

    def reads_blocking():  # the routing, then the hidden row, each read waiting on its own
        return index.cpu().numpy(), weights.detach().float().cpu().numpy(), hidden.to("cpu")

    def reads_one_wait():  # the three into pinned memory from torch's caching allocator, one wait
        reads = index.to("cpu", non_blocking=True), weights.to("cpu", non_blocking=True), hidden.to("cpu", non_blocking=True)
        compute.synchronize()
        return reads[0].numpy(), reads[1].float().numpy(), reads[2]

    held = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in (index, weights, hidden)]

    def reads_one_wait_held():  # the same into pinned buffers made once
        for buffer, tensor in zip(held, (index, weights, hidden)):
            buffer.copy_(tensor, non_blocking=True)
        compute.synchronize()
        return held[0].numpy().copy(), held[1].float().numpy(), held[2]

    calls: dict[str, Callable[[], object]] = {
        "torch.cuda.current_stream(device)": lambda: torch.cuda.current_stream(device),
        "torch.cuda.current_stream()": lambda: torch.cuda.current_stream(),
        "torch.cuda.Event()": lambda: torch.cuda.Event(),
        "torch.cuda.Event(enable_timing=True)": lambda: torch.cuda.Event(enable_timing=True),
        "event.record()": lambda: event.record(),
        "event.record(stream)": lambda: event.record(compute),
        "timing_event.record(stream)": lambda: timing.record(compute),
        "Event().record(stream)": lambda: torch.cuda.Event().record(compute),
        "stream.wait_event(event)": lambda: compute.wait_event(event),
        "event.query()": lambda: event.query(),
        "with torch.cuda.stream(side)": in_side_stream,
        "slot[a:b] (a view)": lambda: slot[:slice_numel],
        "copy_ 26 MB pinned -> slot, side stream": lambda: side_copy(side, slot, host_row),
        "copy_ 6 KB pinned -> device": lambda: small_gpu.copy_(small_pinned, non_blocking=True),
        "copy_ 6 KB pageable -> device": lambda: small_gpu.copy_(small_pageable, non_blocking=True),
        "graph.replay()": lambda: graph.replay(),
        "hidden.to('cpu') (waits)": lambda: hidden.to("cpu"),
        "routing: index.cpu(), weights.float().cpu()": routing,
        "routing and hidden row, three waits": reads_blocking,
        "routing and hidden row, one wait, caching pinned allocator": reads_one_wait,
        "routing and hidden row, one wait, pinned buffers made once": reads_one_wait_held,
        "stream.synchronize(), idle": lambda: compute.synchronize(),
        "from_numpy(w).to(bf16).to(device)": lambda: torch.from_numpy(np.ones(2, np.float32)).to(torch.bfloat16).to(device, non_blocking=True),
        "combine: cat, mul, zeros_like, index_add_": combine,
        "one small kernel (hidden * 2)": lambda: hidden * 2,
    }
    results = {name: timed(work) for name, work in calls.items()}
    for name, micros in results.items():
        print(f"{micros:9.2f} µs  {name}", flush=True)
    with open(args.out, "w") as handle:
        json.dump({"machine": f"{torch.cuda.get_device_name()}, torch {torch.__version__}", "threads": args.threads, "us": results}, handle, indent=1)


def side_copy(side: torch.cuda.Stream, slot: torch.Tensor, host_row: torch.Tensor) -> None:
    """A copy as ``SlotPool.fill`` makes one, without its events."""
    with torch.cuda.stream(side):
        slot.copy_(host_row, non_blocking=True)


if __name__ == "__main__":
    main()
