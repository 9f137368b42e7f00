"""A second host thread that queues a layer's GPU work while the main thread computes the CPU's.

Queueing a GPU expert costs the host 0.12-0.17 ms of Python and driver calls, a split's copies
and kernels 0.7-0.9 ms (calibrated on the lent H100 host, BENCHMARKS.md). Done on the thread that also
computes the CPU's experts, that time delays the CPU path, which sets a layer's end whenever the
layer computes on the CPU at all. Torch releases Python's lock inside its operators, so another
thread can queue while the CPU's operators run: on the lent H100 host queueing 1.2 ms of GPU work
beside a 3.0 ms Phi-3.5-MoE CPU expert took the pair 3.05 ms against 4.03 ms in turn
(``benchmarks/launcher_thread_gpu.py``). The CPU work stays on the main thread, whose OpenMP
team computes it; the launcher takes one more core.

The launcher runs with the caller's CUDA stream, inference mode and grad mode, which are each
thread's own. On the CPU device (tests, CI) the work runs at once on the caller's thread unless a
thread is asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import TypeVar

import torch

T = TypeVar("T")


class Launcher:
    """Starts work on the launcher thread; ``start`` returns a function that waits for its result."""

    def __init__(self, device: torch.device, threaded: bool | None = None) -> None:
        self.device = device
        threaded = device.type == "cuda" if threaded is None else threaded
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="expertcache-launcher") if threaded else None
        self.handed_over = 0  # works run on the launcher thread

    def start(self, work: Callable[[], T], alongside_cpu_work: bool = True) -> Callable[[], T]:
        """Begin ``work``; the returned function waits for it and returns its result (raising what
        it raised). Without CPU work to overlap (``alongside_cpu_work`` false) it runs at once on
        the caller's thread: handing it over would only add the hand-over."""
        if self._thread is None or not alongside_cpu_work:
            result = work()
            return lambda: result
        self.handed_over += 1
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

        def as_the_caller() -> T:
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                    return work()

        return self._thread.submit(as_the_caller).result
