"""Measure a cost Profile on this machine, for a loaded model's expert shape and dtype.

Everything the simulator charges comes from here: pinned host-to-device bandwidth, CPU expert
time by thread count and token count, GPU expert time by token count, how much CPU experts and
copies slow each other, and the time per layer outside expert compute (dense layers, routing,
the runtime's own dispatch), measured by running the model itself. CPU experts and copies cycle
through every expert, as decode does.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from expertcache.runtime.cpu_kernel import cpu_products, faster_one_row_kernel
from expertcache.runtime.experts import expert_ffn
from expertcache.runtime.kv import CACHE_ARGUMENT, empty_cache
from expertcache.runtime.slots import compute_stream
from expertcache.runtime.split import least_gpu_share
from expertcache.simulator.costs import ONEDNN, Profile, nearest_thread_count
from expertcache.simulator.decision_time import measure_decision_ms
from expertcache.simulator.placements import AllOnCpu
from expertcache.simulator.schedule import CPU_ONLY, GPU_ONLY

TOKEN_COUNTS = (1, 8, 64)
GPU_TOKEN_COUNTS = (1, 8, 64, 512)


WARM_UP_S = 1.0
"""Seconds of CPU expert runs before timing a thread count."""

CPU_SAMPLES = 32
"""CPU experts timed per table point, at least, and averaged: decode pays the mean. On the lent
H100 host one expert took about 4.5 or about 6.7 ms, flipping every second or so, so a median of
a few lands on one of the two (a fidelity run's calibrated median of 5 was 6.96 ms, its runs
averaged 6.1 ms per CPU expert)."""

CPU_WINDOW_S = 4.0
"""Seconds over which the one-token CPU point, decode's, is sampled at least: 32 Mixtral experts
take 0.15 s, inside one of the host's speed phases (a bench whose calibration averaged 4.8 ms
then ran its CPU experts at 6.9 ms). Twenty estimates on one lent H100 host scattered with a
standard deviation of 0.25 ms back to back, 0.21 ms over 1.5 s, 0.12 ms over 4 s
(``benchmarks/calibration_spread_gpu.py``)."""

CONTENTION_SAMPLES = 32
"""CPU experts timed alone and under a copy (and copies alone and under CPU experts), at least,
their means compared: decode pays the mean. A median of 5 pairs put the CPU's slowdown under
copies at 1.13-1.24 in fidelity runs 7-9, while the CPU experts of runs 8 and 9, most of them
computed under copies, fitted 0.90-1.05 times the calibrated time alone; the host's speed phases
outlast a pair."""

LAUNCH_SAMPLES = 32
"""Host queueings of one GPU expert timed, at least (their median kept): the time outside experts
is a layer's wall time less one of these per expert, so one slow sample, times every expert of a
prefill layer, could make it look negative. Splits are timed as many times."""

OUTSIDE_ROUNDS = 7
"""Rounds of decode passes timed under each fixed placement (all hits, all on the CPU, one copied
miss per layer), the placements taking turns, after one untimed round. What calibration keeps
of them are differences of tenths of a millisecond per layer between passes that a shared host
slows by up to 2x from one minute to the next: measured twice each, one placement after the
other, the CPU path's cost came out at 0.25-1.39 ms per Mixtral layer and an all-hit layer's at
1.78-2.94 ms in calibrations on lent H100 hosts whose benches' all-hit layers took 2.2-2.6 ms."""

PROMPT_TOKENS = 16
"""Tokens in the key-value cache before the timed decode passes, as in a bench's prompts."""

PREFILL_TOKENS = 64
"""Tokens of the prefill pass whose time outside experts is the profile's second point."""

LONGEST_SEQUENCE = max(PREFILL_TOKENS, PROMPT_TOKENS + 3 * (OUTSIDE_ROUNDS + 1))
"""The most tokens any of calibration's sequences holds in its key-value cache (a prefill, or the
prompt with every decode pass over it, three placements a round): the cache a GPU budget must
hold while calibrating, where a run's holds its longest generation."""

COPY_SAMPLES = 16
"""Host-to-device copies timed, at least (their median kept). The one-copy-per-layer run prices
what the next layer's dense work hides against this copy time, so an outlier here lands there
too: a median of 3 once gave 34 GB/s on the lent H100, where every bench measured 49-55."""

STEP_TOKENS = 8
"""New tokens of each generation whose steps are timed against bare forward passes."""

STEP_ROUNDS = 5
"""Generations timed against as many runs of bare forward passes, taking turns, after one untimed
round; the median of the rounds' differences is kept."""

SPLIT_SHARE = 0.5
"""The GPU's share of the split whose host time is measured: decode's splits on the lent H100 host
gave the GPU 0.4-0.7 of the expert."""


def _time_s(run: Callable[[], None], repeats: int, synchronize: bool, average: Callable = statistics.median, min_seconds: float = 0.0) -> float:
    """``average`` of ``run``'s wall times over at least ``repeats`` runs and ``min_seconds``, after one untimed run."""
    run()  # warm-up
    times = []
    until = time.perf_counter() + min_seconds
    while len(times) < repeats or time.perf_counter() < until:
        if synchronize:
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if synchronize:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return average(times)


def _gpu_ms(run: Callable[[], None], repeats: int) -> float:
    """The GPU's milliseconds per call of ``run``, its kernels back to back: ``repeats`` calls captured
    in one CUDA graph, timed by events around its replay. A wall time around eager calls holds their
    launches too, which the profile prices apart (``gpu_launch_ms``), and the slot graphs run a decode
    step's expert without them: on the lent H100 an OLMoE-1B-7B expert's wall time made all-hit
    layers priced at 2.52 ms run in 1.29 (BENCHMARKS.md, session 16)."""
    current = torch.cuda.current_stream()
    side = torch.cuda.Stream()
    side.wait_stream(current)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side):
        run()  # cuBLAS sets up this stream's workspace outside the capture
        graph.capture_begin()
        for _ in range(repeats):
            run()
        graph.capture_end()
    current.wait_stream(side)
    graph.replay()  # warm-up
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeats


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


def calibrate(
    model, name: str = "calibrated", threads: list[int] | None = None, repeats: int = 5, progress=None, slots: int | None = None
) -> Profile:
    """Measure a Profile with ``model`` (from ``expertcache.load`` or ``attach``); the cache core's
    decisions are timed at ``slots`` slots (default: the attached cache's).

    The cache's slots and state are left as they were, so the model generates the same afterwards.
    Its notes say how long the measuring took (the issue's bound is two minutes).
    """
    started = time.perf_counter()
    runtime = model.expertcache
    module = runtime.layers[runtime.moe_layers[0]]
    layout = runtime.layout
    on_cuda = runtime.device.type == "cuda"
    hidden = model.config.get_text_config().hidden_size
    say = progress or (lambda message: None)
    rows = _every_expert(runtime)
    cpu_expert = _cpu_expert_runner(runtime, rows)

    say("host-to-device copies")
    slot = torch.empty(layout.numel, dtype=layout.dtype, device=runtime.device)
    copy_s = _time_s(lambda: slot.copy_(next(rows), non_blocking=True), max(repeats, COPY_SAMPLES), on_cuda)
    h2d_gbps = layout.nbytes / copy_s / 1e9

    cpu_ms: dict[int, dict[int, float]] = {}
    one_row_kernel: dict[int, str] = {}
    for count in threads or thread_counts():
        say(f"CPU expert, {count} threads")
        cpu_ms[count], one_row_kernel[count] = _cpu_expert_table(
            cpu_expert, hidden, layout.dtype, count, TOKEN_COUNTS, repeats, WARM_UP_S, CPU_WINDOW_S
        )
    # the rest is measured on the one-row kernel the runtime will use at its thread count
    kernel = one_row_kernel[nearest_thread_count(one_row_kernel, runtime.threads)]
    with _one_row_kernel(runtime, kernel):
        cpu_slowdown = copy_slowdown = 1.0
        if on_cuda:
            say("CPU experts and copies sharing memory")
            one_row = _on_kernel(kernel, cpu_expert)
            cpu_slowdown, copy_slowdown = _contention(slot, rows, lambda: one_row(torch.randn(1, hidden, dtype=layout.dtype)), repeats)

        say("GPU expert")
        device_weights = layout.views(slot)
        slot.copy_(next(rows))
        gpu_ms = {}
        for tokens in GPU_TOKEN_COUNTS:
            x = torch.randn(tokens, hidden, dtype=layout.dtype, device=runtime.device)
            run = lambda: expert_ffn(module, x, device_weights)  # noqa: E731
            gpu_ms[tokens] = _gpu_ms(run, max(repeats, LAUNCH_SAMPLES)) if on_cuda else 1e3 * _time_s(run, repeats, False)
        launch_ms = 0.0
        scratch = runtime.scratch_slot
        if scratch is not None:  # a staging slot: the cache's own slots keep their experts
            # a decode step's one row, where the layer's GPU experts read it (replayed from a graph, on a GPU)
            x = runtime.gpu_input(torch.randn(1, hidden, dtype=layout.dtype, device=runtime.device))
            runtime.pool.fill(scratch, next(rows))
            stream = compute_stream(runtime.device)  # a layer looks it up once for all its experts
            launch_ms = 1e3 * _time_s(lambda: runtime.queue_gpu_expert(module, x, scratch, stream), max(repeats, LAUNCH_SAMPLES), False)  # host time only
        split_launch_ms = None
        least_share = least_gpu_share(module, layout)
        if scratch is not None and least_share > 0:
            say("host time of a split expert")
            split_launch_ms = _split_launch_ms(runtime, module, x, scratch, repeats)  # x: the decode step's row, as above

        say("layers outside expert compute")
        dense_ms, cpu_overhead_ms, dense_overlap_ms = _time_outside_experts(model, runtime, launch_ms, 1e3 * copy_s)
        say("generation loop between passes")
        step_overhead_ms = _step_overhead_ms(model, runtime)
        decision_slots = slots or runtime.config.slots
        say(f"the cache core's decisions, {decision_slots} slots")
        decision_ms = measure_decision_ms(decision_slots, runtime.stats.num_layers, runtime.num_experts, runtime.moe_layers, runtime.top_k)
    return Profile(
        name=name,
        expert_bytes=layout.nbytes,
        h2d_gbps=h2d_gbps,
        cpu_expert_ms=cpu_ms,
        gpu_expert_ms=gpu_ms,
        dense_ms=dense_ms,
        layer_overhead_ms=0.0,
        cpu_slowdown_during_copy=cpu_slowdown,
        copy_slowdown_during_cpu=copy_slowdown,
        gpu_launch_ms=launch_ms,
        cpu_path_overhead_ms=cpu_overhead_ms,
        split_min_gpu_share=least_share,
        split_launch_ms=split_launch_ms,
        dense_overlap_ms=dense_overlap_ms,
        step_overhead_ms=step_overhead_ms,
        decision_ms=decision_ms,
        decision_slots=decision_slots,
        one_row_kernel=one_row_kernel,
        notes=f"measured by expertcache calibrate on {torch.cuda.get_device_name() if on_cuda else 'the CPU device'}, "
        f"{os.cpu_count()} cores, in {time.perf_counter() - started:.0f} s; dense_ms holds all time per layer outside expert work (dispatch included), "
        f"decoding {'from CUDA graphs' if runtime.graphs is not None else 'eagerly'}",
    )


def _split_launch_ms(runtime, module, rows: torch.Tensor, slot: int, repeats: int) -> float:
    """Median host milliseconds of a split besides its CPU share: copies started, the GPU's kernels
    and the CPU's activations queued (``CachedExperts.queue_split_expert``). The device is idle
    before each, so the GPU's slices land while the CPU computes and nothing waits for the link."""
    layer = runtime.moe_layers[0]
    experts = itertools.cycle(range(runtime.num_experts))
    on_cuda = runtime.device.type == "cuda"
    rows_on_host = rows.cpu()
    samples = []
    for sample in range(max(repeats, LAUNCH_SAMPLES) + 1):  # the first one warms up
        if on_cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        cpu_s = runtime.queue_split_expert(module, layer, next(experts), rows, rows_on_host, slot, SPLIT_SHARE)
        host_s = time.perf_counter() - started - cpu_s
        if sample:
            samples.append(host_s)
    if on_cuda:
        torch.cuda.synchronize()
    return 1e3 * max(0.0, statistics.median(samples))


def cpu_expert_ms(
    model, threads: int, token_counts: tuple[int, ...] = (1,), repeats: int = 5, warm_up_s: float = WARM_UP_S, window_s: float = CPU_WINDOW_S
) -> dict[int, float]:
    """Mean milliseconds of one CPU expert by token count, with ``threads`` threads, cycling
    through every expert as decode does, one row on the runtime's kernel: the measurement behind
    the profile's CPU table, on its own so that a long run can repeat it and see how far the
    machine's CPU speed has drifted (on the lent H100 host the same 8-thread measurement read 11.5
    ms, then 7.0 ms within the same minute)."""
    runtime = model.expertcache
    cpu_expert = _cpu_expert_runner(runtime, _every_expert(runtime))
    hidden = model.config.get_text_config().hidden_size
    table, _ = _cpu_expert_table(
        cpu_expert, hidden, runtime.layout.dtype, threads, token_counts, repeats, warm_up_s, window_s, runtime.one_row_kernel
    )
    return table


def _cpu_expert_runner(runtime, rows: Iterator[torch.Tensor]) -> Callable[[torch.Tensor], None]:
    module = runtime.layers[runtime.moe_layers[0]]
    return lambda x: expert_ffn(module, x, runtime.layout.views(next(rows)))


def _on_kernel(kernel: str, cpu_expert: Callable[[torch.Tensor], None]) -> Callable[[torch.Tensor], None]:
    """``cpu_expert`` with its one-row products on ``kernel`` (``runtime.cpu_kernel``)."""

    def run(x: torch.Tensor) -> None:
        with cpu_products(kernel, x.shape[0]):
            cpu_expert(x)

    return run


@contextmanager
def _one_row_kernel(runtime, kernel: str) -> Iterator[None]:
    """The runtime's one-row CPU experts on ``kernel`` for a while."""
    saved, runtime.one_row_kernel = runtime.one_row_kernel, kernel
    try:
        yield
    finally:
        runtime.one_row_kernel = saved


def _cpu_expert_table(
    cpu_expert: Callable[[torch.Tensor], None],
    hidden: int,
    dtype: torch.dtype,
    threads: int,
    token_counts: tuple[int, ...],
    repeats: int,
    warm_up_s: float,
    window_s: float,
    one_row_kernel: str | None = None,
) -> tuple[dict[int, float], str]:
    """CPU expert milliseconds by token count, and the kernel of the one-row point: ``one_row_kernel``,
    or when None the faster of the two (each sampled over the window, taking turns)."""
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _keep_running(lambda: cpu_expert(torch.randn(1, hidden, dtype=dtype)), warm_up_s)
        table = {}
        kernel = one_row_kernel or ONEDNN
        for tokens in token_counts:
            x = torch.randn(tokens, hidden, dtype=dtype)
            window = window_s if tokens == 1 else 0.0  # prefill's points matter less than the seconds they would take
            samples = max(repeats, CPU_SAMPLES)
            if tokens == 1 and one_row_kernel is None:
                kernel, seconds = faster_one_row_kernel(lambda: cpu_expert(x), samples, 2 * window)
            else:
                on_kernel = _on_kernel(kernel, cpu_expert)
                seconds = _time_s(lambda: on_kernel(x), samples, False, statistics.fmean, window)
            table[tokens] = 1e3 * seconds
        return table, kernel
    finally:
        torch.set_num_threads(saved_threads)


def _every_expert(runtime) -> Iterator[torch.Tensor]:
    """Every routed expert's host row in turn, layers interleaved. Decode reads a different
    expert each time, and how fast one is read depends on where its memory lies: on the lent
    H100 host one expert read over and over ran up to 1.5x faster than decode's mix."""
    layers = [runtime.host[layer] for layer in runtime.moe_layers]
    return itertools.cycle([rows[expert] for expert in range(layers[0].shape[0]) for rows in layers])


def _contention(slot: torch.Tensor, rows: Iterator[torch.Tensor], cpu_expert: Callable[[], None], repeats: int) -> tuple[float, float]:
    """How much slower a CPU expert runs under a copy, and a copy under CPU experts (both read host memory)."""
    stream = torch.cuda.Stream()

    def timed_copy() -> tuple[torch.cuda.Event, torch.cuda.Event]:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(stream):
            start.record(stream)
            slot.copy_(next(rows), non_blocking=True)
            end.record(stream)
        return start, end

    cpu_alone, cpu_shared, copy_alone, copy_shared = [], [], [], []
    for _ in range(max(repeats, CONTENTION_SAMPLES)):
        started = time.perf_counter()
        cpu_expert()
        cpu_alone.append(time.perf_counter() - started)
        start, end = timed_copy()
        stream.synchronize()
        copy_alone.append(start.elapsed_time(end))
        start, end = timed_copy()
        started = time.perf_counter()
        cpu_expert()
        cpu_shared.append(time.perf_counter() - started)
        cpu_expert()  # keep the CPU busy for the whole copy
        stream.synchronize()
        copy_shared.append(start.elapsed_time(end))
    mean = statistics.fmean
    return max(1.0, mean(cpu_shared) / mean(cpu_alone)), max(1.0, mean(copy_shared) / mean(copy_alone))


class _EveryAccessHits:
    """Stands in for the cache while calibrating: every access hits, in slot ``expert % slots``.
    The outputs are wrong (layers share slots); the work and the dispatch are a resident run's."""

    def __init__(self, slots: int) -> None:
        self.slots = slots

    def access_many(self, layers, experts, weights, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        slot = np.asarray(experts, dtype=np.int64) % self.slots
        return np.ones(len(slot), dtype=np.bool_), slot, np.full(len(slot), -1, dtype=np.int64)


class _OneFetchPerLayer(_EveryAccessHits):
    """As ``_EveryAccessHits``, but a layer's first access misses, and is not kept: it goes
    through a staging slot."""

    def access_many(self, layers, experts, weights, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        hit, slot, evicted = super().access_many(layers, experts, weights, step)
        hit[0], slot[0] = False, -1
        return hit, slot, evicted


def _time_outside_experts(model, runtime, launch_ms: float, copy_ms: float) -> tuple[dict[int, float], float, float]:
    """Per layer and token count, the time outside expert work when every expert is resident
    (wall time less queueing the experts); what a layer pays on top for computing experts on
    the CPU at all (its input to the host, the outputs back), from an all-CPU pass's wall time
    less its CPU expert time; and how much of a copy the host's next dense work hides, from a
    pass where each layer copies one expert in and computes it on the GPU, against the resident
    pass plus that copy. The one-token figures are decode's: passes over a prompt's cache, the
    placements taking turns (``OUTSIDE_ROUNDS``), each figure a median of per-round differences."""
    runtime.end_pass()  # a pass left open by the caller counts in the caller's stats, not calibration's
    vocab = model.config.get_text_config().vocab_size
    device = runtime.device
    all_hits = _EveryAccessHits(runtime.pool.buffer.shape[0])
    ids = torch.randint(0, vocab, (1, PREFILL_TOKENS), device=device)
    with runtime.decided_by(all_hits):
        prefill = [_pass_ms(model, runtime, ids) for _ in range(3)]
    accesses = min(PREFILL_TOKENS * runtime.top_k, runtime.num_experts)
    resident = {PREFILL_TOKENS: statistics.median(prefill[1:]) - accesses * launch_ms}
    placements = [(all_hits, CPU_ONLY), (AllOnCpu(), CPU_ONLY)]
    if runtime.scratch_slot is not None:  # misses can be staged: the runtime copies some to the GPU
        placements.append((_OneFetchPerLayer(runtime.config.slots), GPU_ONLY))
    with runtime.decided_by(all_hits), torch.inference_mode():
        runtime.begin_request(0)
        # the static cache generate decodes into, so that decode passes replay the CUDA graphs
        # generate's steps will (captured here, in the untimed round)
        cache = empty_cache(model, LONGEST_SEQUENCE)
        model(torch.randint(0, vocab, (1, PROMPT_TOKENS), device=device), **{CACHE_ARGUMENT: cache}, use_cache=True)
        runtime.end_pass()
    rounds = []
    for round_ in range(OUTSIDE_ROUNDS + 1):  # the first one untimed
        samples = []
        for decider, miss_path in placements:
            with runtime.decided_by(decider, miss_path):
                samples.append(_pass_ms(model, runtime, torch.randint(0, vocab, (1, 1), device=device), cache))
        if round_:
            rounds.append(samples)
    launches = runtime.top_k * launch_ms  # the resident and the fetching pass each queue top_k experts
    resident[1] = statistics.median(sample[0] for sample in rounds) - launches
    # more tokens never take less: the prefill pass has its launches, timed apart, taken off, which
    # on a noisy host took a Phi-3.5-MoE prefill layer's time to 0 ms (decode's: 2.39)
    resident[PREFILL_TOKENS] = max(resident[PREFILL_TOKENS], resident[1])
    cpu_overhead = max(0.0, statistics.median(on_cpu - hits for hits, on_cpu, *_ in rounds) + launches)
    hidden = 0.0
    if len(placements) == 3:  # the fetching pass also waits for a copy, less what the dense work hides
        hidden = min(max(statistics.median(hits + copy_ms - fetching for hits, _, fetching in rounds), 0.0), resident[1])
    return {tokens: max(ms, 0.0) for tokens, ms in sorted(resident.items())}, cpu_overhead, float(hidden)


def _step_overhead_ms(model, runtime) -> float:
    """Per decode step, ``generate``'s own time between forward passes: its per-step wall time (the
    runtime's decode passes, from one pass's first MoE layer to the next's) less a bare forward
    pass's, every access a hit in both. The bare passes run on the cache ``generate`` then decodes
    into, so both replay the same decode graphs. On the lent H100 an OLMoE-1B-7B token took 21.5 ms
    where its layers were priced at 19.2 (BENCHMARKS.md, session 17)."""
    runtime.end_pass()
    vocab = model.config.get_text_config().vocab_size
    prompt = torch.randint(0, vocab, (1, PROMPT_TOKENS), device=runtime.device)
    rounds = []
    with runtime.decided_by(_EveryAccessHits(runtime.pool.buffer.shape[0])), torch.inference_mode():
        stats = runtime.stats  # calibration's own, while decided_by lasts
        for round_ in range(STEP_ROUNDS + 1):  # the first one untimed
            runtime.begin_request(0)
            cache = empty_cache(model, PROMPT_TOKENS + STEP_TOKENS)
            model(prompt, **{CACHE_ARGUMENT: cache}, use_cache=True)
            runtime.end_pass()
            passes = [_pass_ms(model, runtime, prompt[:, -1:], cache) for _ in range(STEP_TOKENS - 1)]
            bare_ms = len(runtime.moe_layers) * statistics.fmean(passes)
            runtime.begin_request(0)
            seconds, tokens = stats.decode_s, stats.decode_tokens
            model.generate(prompt, max_new_tokens=STEP_TOKENS, min_new_tokens=STEP_TOKENS, do_sample=False)
            runtime.end_pass()
            step_ms = 1e3 * (stats.decode_s - seconds) / (stats.decode_tokens - tokens)
            if round_:
                rounds.append(step_ms - bare_ms)
    return max(0.0, statistics.median(rounds))


def _pass_ms(model, runtime, ids: torch.Tensor, cache=None) -> float:
    """Wall time per MoE layer of one forward pass of ``ids``, less its CPU expert time: a new
    request's prefill, or with ``cache`` (a prompt's key-value cache) the next decode step."""
    before = runtime.stats.layer_cpu_s.sum()
    if cache is None:
        runtime.begin_request(0)
    started = time.perf_counter()
    with torch.inference_mode():
        model(ids, **{CACHE_ARGUMENT: cache}, use_cache=cache is not None)
    runtime.end_pass()
    wall = time.perf_counter() - started
    return 1e3 * (wall - (runtime.stats.layer_cpu_s.sum() - before)) / len(runtime.moe_layers)
