"""Measure a cost Profile on this machine, for a loaded model's expert shape and dtype.

Everything the simulator charges comes from here: pinned host-to-device bandwidth, CPU expert
time by thread count and token count (and its slowdown while a copy shares memory bandwidth),
GPU expert time by token count, and the time per layer outside expert compute (dense layers,
routing, the runtime's own dispatch), measured by running the model itself.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch

from expertcache.runtime.experts import expert_ffn
from expertcache.simulator.costs import Profile

TOKEN_COUNTS = (1, 8, 64)
GPU_TOKEN_COUNTS = (1, 8, 64, 512)


WARM_UP_S = 1.0
"""Seconds of CPU expert runs before timing a thread count."""


def _median_s(run: Callable[[], None], repeats: int, synchronize: bool) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        if synchronize:
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if synchronize:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _keep_running(run: Callable[[], None], seconds: float) -> None:
    """Run for a while first: right after a thread-count change the first parallel regions run
    up to 2x slow (measured on the lent H100 host), which one warm-up call does not absorb."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        run()


def thread_counts(cores: int | None = None) -> list[int]:
    """A spread of thread counts up to all cores, including all-but-one (a core left to the copies)."""
    cores = cores or os.cpu_count() or 1
    counts = {1, 2, 4, 8, 16, 32, 64, cores - 1, cores}
    return sorted(c for c in counts if 1 <= c <= cores)


def calibrate(model, name: str = "calibrated", threads: list[int] | None = None, repeats: int = 5, progress=None) -> Profile:
    """Measure a Profile with ``model`` (from ``expertcache.load`` or ``attach``)."""
    runtime = model.expertcache
    layer = runtime.moe_layers[0]
    module = runtime.layers[layer]
    rows = runtime.host[layer]
    layout = runtime.layout
    on_cuda = runtime.device.type == "cuda"
    hidden = model.config.get_text_config().hidden_size
    say = progress or (lambda message: None)
    saved_threads = torch.get_num_threads()

    say("host-to-device copies")
    slot = torch.empty(layout.numel, dtype=layout.dtype, device=runtime.device)
    copy_s = _median_s(lambda: slot.copy_(rows[1], non_blocking=True), repeats, on_cuda)
    h2d_gbps = layout.nbytes / copy_s / 1e9

    cpu_ms: dict[int, dict[int, float]] = {}
    weights = layout.views(rows[0])
    for count in threads or thread_counts():
        say(f"CPU expert, {count} threads")
        torch.set_num_threads(count)
        cpu_ms[count] = {}
        _keep_running(lambda: expert_ffn(module, torch.randn(1, hidden, dtype=layout.dtype), weights), WARM_UP_S)
        for tokens in TOKEN_COUNTS:
            x = torch.randn(tokens, hidden, dtype=layout.dtype)
            cpu_ms[count][tokens] = 1e3 * _median_s(lambda: expert_ffn(module, x, weights), repeats, False)
    torch.set_num_threads(saved_threads)

    slowdown = 1.0
    if on_cuda:
        say("CPU expert while copies run")
        stream = torch.cuda.Stream()
        x = torch.randn(1, hidden, dtype=layout.dtype)
        alone = _median_s(lambda: expert_ffn(module, x, weights), repeats, False)
        under_copies = []
        for _ in range(repeats):
            with torch.cuda.stream(stream):  # a burst of copies much longer than one CPU expert
                for source in range(rows.shape[0]):
                    slot.copy_(rows[source], non_blocking=True)
            started = time.perf_counter()
            expert_ffn(module, x, weights)
            under_copies.append(time.perf_counter() - started)
            stream.synchronize()
        slowdown = max(1.0, statistics.median(under_copies) / alone)

    say("GPU expert")
    device_weights = layout.views(slot)
    slot.copy_(rows[0])
    gpu_ms = {}
    for tokens in GPU_TOKEN_COUNTS:
        x = torch.randn(tokens, hidden, dtype=layout.dtype, device=runtime.device)
        gpu_ms[tokens] = 1e3 * _median_s(lambda: expert_ffn(module, x, device_weights), repeats, on_cuda)

    say("layers outside expert compute")
    dense_ms = _time_outside_experts(model, runtime)
    return Profile(
        name=name,
        expert_bytes=layout.nbytes,
        h2d_gbps=h2d_gbps,
        cpu_expert_ms=cpu_ms,
        gpu_expert_ms=gpu_ms,
        dense_ms=dense_ms,
        layer_overhead_ms=0.0,
        cpu_slowdown_during_copy=slowdown,
        notes=f"measured by expertcache calibrate on {torch.cuda.get_device_name() if on_cuda else 'the CPU device'}, "
        f"{os.cpu_count()} cores; dense_ms holds all time per layer outside expert compute (dispatch included)",
    )


def _time_outside_experts(model, runtime) -> dict[int, float]:
    """Per layer, the wall time of forward passes minus their expert compute, by token count."""
    results = {}
    with runtime.every_expert_on_cpu():
        for tokens in (1, 64):
            ids = torch.randint(0, model.config.get_text_config().vocab_size, (1, tokens), device=runtime.device)
            samples = []
            for _ in range(3):
                before = runtime.stats.layer_cpu_s.sum()
                runtime.begin_request(0)
                started = time.perf_counter()
                with torch.inference_mode():
                    model(ids)
                runtime.end_pass()
                wall = time.perf_counter() - started
                samples.append((wall - (runtime.stats.layer_cpu_s.sum() - before)) / len(runtime.moe_layers))
            results[tokens] = 1e3 * statistics.median(samples[1:])
    return results
