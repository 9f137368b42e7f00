"""Which of torch's CPU kernels multiplies a decode step's one row by an expert's host weights.

torch hands bf16 and fp16 products on the CPU to oneDNN wherever the CPU supports it. For one
row (a matrix-vector product, every decode step's CPU expert) torch's own kernel, a vectorized
dot product per output accumulating in fp32, can be much faster. Cycling through a layer's
experts as decode does, with 15 threads on one lent H100 host's Xeon (AMX), it took 2.89 against
3.98 ms for a Phi-3.5-MoE expert and 5.17 against 7.70 for a Mixtral one; with two threads on the
development machine's EPYC, 5.0 against 10.8 (``benchmarks/one_row_kernels.py``). But with
one thread oneDNN was faster on the Xeon (16.1 against 24.3 ms), another lent host's calibration
kept oneDNN at 15 threads, and with two rows or more oneDNN won everywhere. So ``calibrate`` times
both for one row (``faster_one_row_kernel``), the profile says which to use per thread count
(``Profile.one_row_kernel``), and other row counts keep torch's choice.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

from expertcache.simulator.costs import ONE_ROW_KERNELS, TORCH


@contextmanager
def _without_onednn() -> Iterator[None]:
    # the flag itself, not torch.backends.mkldnn.flags(), which also resets oneDNN's fp32 settings
    saved = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = saved


def cpu_products(kernel: str, rows: int) -> AbstractContextManager[None]:
    """The context in which ``rows`` rows are multiplied on the CPU: ``kernel`` for one row, torch's
    choice for more."""
    return _without_onednn() if kernel == TORCH and rows == 1 else nullcontext()


def faster_one_row_kernel(run: Callable[[], None], samples: int, seconds: float) -> tuple[str, float]:
    """The faster kernel for ``run`` (a one-row CPU expert) and its mean seconds (``one_row_kernel_means``)."""
    means = one_row_kernel_means(run, samples, seconds)
    best = min(ONE_ROW_KERNELS, key=means.__getitem__)
    return best, means[best]


def one_row_kernel_means(run: Callable[[], None], samples: int, seconds: float) -> dict[str, float]:
    """Mean seconds of ``run`` (a one-row CPU expert) on each kernel: the two take turns, at least
    ``samples`` runs each and ``seconds`` in all, so that both meet the same state of a host whose
    CPU speed drifts from one second to the next."""
    times: dict[str, list[float]] = {kernel: [] for kernel in ONE_ROW_KERNELS}
    for kernel in ONE_ROW_KERNELS:  # each kernel's first product of a shape costs extra
        with cpu_products(kernel, 1):
            run()
    until = time.perf_counter() + seconds
    turn = 0
    while min(len(t) for t in times.values()) < samples or time.perf_counter() < until:
        for kernel in ONE_ROW_KERNELS if turn % 2 == 0 else reversed(ONE_ROW_KERNELS):
            with cpu_products(kernel, 1):
                started = time.perf_counter()
                run()
                times[kernel].append(time.perf_counter() - started)
        turn += 1
    return {kernel: statistics.fmean(t) for kernel, t in times.items()}
