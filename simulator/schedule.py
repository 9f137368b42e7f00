"""Where each missed expert of a layer is computed: one decision rule for the simulator and the runtime.

A miss can run on the CPU from its host copy, or on the GPU once its weights are copied over the
PCIe link (into the slot the cache gave it, or into a staging slot when the policy did not keep
it). On the lent H100 host one expert copies (6.5 ms) about as fast as the CPU computes it
(7.3 ms), so sending one of a layer's two misses each way nearly halves the layer, which is what
HybriMoE's intra-layer scheduling does. The rule is greedy, in the order the misses are handed
in: each goes where it would finish first given what the two paths already hold. The simulator
calls it with its clocks; the runtime with its own estimate of the link, the profile's rates and,
on a GPU, the CPU's speed as its own CPU experts show it (``runtime.cpu_pace``).

Whole misses leave a path idle at the layer's end: a lone miss leaves one idle throughout, and of
two misses one each way, the sooner path waits for the other. So the layer's last miss may also
be split (``runtime.split``): the CPU computes some of its intermediate units while the weights
of the others and of the output projection are copied, sized so that both paths end together;
the GPU then finishes the expert. On the lent H100 host half of Mixtral-8x7B's decode layers
had two misses, and ran one each way in 8.4 ms where a split of the second would balance the
paths at about 7 (Mixtral run 23, BENCHMARKS.md).
"""

from __future__ import annotations

import numpy as np
from numba import njit

CPU_ONLY, HYBRID, GPU_ONLY = 0, 1, 2
"""How misses may be placed: the CPU always (static placements), whichever finishes first
(expertcache), the GPU always (on-demand fetching)."""


RATES = ("copy_s", "cpu_slowdown", "copy_slowdown", "launch_s", "cpu_overhead_s", "split_min_gpu_share", "split_launch_s",
         "dense_overlap_s", "split_cpu_scale")
"""The entries of ``split_misses``' ``rates`` array, in order (see ``rates_of``). ``split_cpu_scale``, a
split's CPU share against its part of a whole CPU expert, is 1 as a profile prices it; on a GPU the
runtime sets it from what its own splits' CPU shares take (``runtime.cpu_pace``)."""


def rates_of(profile, expert_bytes: int) -> np.ndarray:
    """``split_misses``' rates for a ``costs.Profile`` and an expert size."""
    split_launch_ms = profile.gpu_launch_ms if profile.split_launch_ms is None else profile.split_launch_ms
    return np.array([profile.copy_s(expert_bytes), profile.cpu_slowdown_during_copy,
                     profile.copy_slowdown_during_cpu, profile.gpu_launch_ms / 1e3, profile.cpu_path_overhead_ms / 1e3,
                     profile.split_min_gpu_share, split_launch_ms / 1e3, profile.dense_overlap_ms / 1e3,
                     1.0])  # fmt: skip


MIN_CPU_SHARE = 0.05
"""A split leaves the CPU at least this share of the expert, or the miss runs whole on the GPU."""


@njit(cache=True, error_model="numpy", inline="always")
def split_misses(tokens, admitted, count, mode, ready, gpu, link_free, host, cpu_s, gpu_s, rates, gpu_share, copy_end, spent):
    """Place a layer's misses and advance the clocks; returns ``(gpu, cpu, link_free)``.

    ``tokens[j]``: rows of miss ``j`` (``j < count``); ``admitted[j]``: the cache gave it a
    slot, so it is copied whichever way it runs. ``ready``: when routing is known; ``gpu``: when
    the GPU path is free; ``link_free``: when queued copies end; ``host``: when the host has
    queued the layer's hits. ``cpu_s``/``gpu_s``: seconds for one expert by row count;
    ``rates``: see ``RATES``.

    The host starts the layer's copies as soon as routing is known (``ready``), then queues every
    GPU expert (``launch_s`` each) before it computes the CPU's share, so GPU work delays the CPU
    path, and a GPU expert ends no sooner than it is queued; a split costs the host
    ``split_launch_s`` besides its CPU share (charged before it: the part after it, queueing the
    output, delays the GPU's last kernel as much), and that share takes ``split_cpu_scale`` times
    its part of a whole CPU expert. Copies and CPU experts both read host memory:
    while both run, CPU experts take ``cpu_slowdown`` times as long and copies ``copy_slowdown``
    times. A layer with any CPU work pays ``cpu_overhead_s`` once (its input to the host, the
    outputs back). Copies a GPU computation waits for go first; those of kept misses computed on
    the CPU queue behind them.

    Each miss is placed greedily where it would finish first, judged at its turn and as the host
    sees it: the host goes on to the next layer's dense work while the GPU finishes, so the last
    ``dense_overlap_s`` of GPU work costs the layer nothing, while CPU work holds the host. The last
    miss may instead be split when ``split_min_gpu_share`` > 0, given where the others went: its
    GPU share copied behind theirs, its CPU share computed after theirs, the GPU computing last,
    once the CPU's share is done and its own copied. Then the layer is charged with every placement
    known (a copy is slowed when the layer has CPU work, which a later miss may add). Writes
    ``gpu_share[j]`` (1: on the GPU, 0: on the CPU, between: split) and ``copy_end[j]`` (-1 when
    not copied) and adds CPU-busy, GPU-busy, link-busy and stall seconds to ``spent[0:4]``.
    """
    copy_s, cpu_slowdown, copy_slowdown, launch_s, cpu_overhead_s = rates[0], rates[1], rates[2], rates[3], rates[4]
    # decide
    cpu, issued, link, gpu_path, background = host, host, max(link_free, ready), gpu, 0
    first_on_cpu = True
    for j in range(count):
        n = tokens[j]
        copied_at = link + copy_s * (copy_slowdown if not first_on_cpu and cpu > link else 1.0)
        computed = max(gpu_path, copied_at) + gpu_s[n]
        gpu_finish = max(computed, issued + launch_s)
        # the host goes on to the next layer's dense work while the GPU finishes; the CPU path holds it
        gpu_seen = max(computed - rates[7], issued + launch_s)
        copying = link > cpu or background > 0 or admitted[j]
        cpu_finish = cpu + cpu_s[n] * (cpu_slowdown if copying else 1.0) + (cpu_overhead_s if first_on_cpu else 0.0)
        on_gpu = mode == GPU_ONLY or (mode == HYBRID and gpu_seen < cpu_finish)
        gpu_share[j] = 1.0 if on_gpu else 0.0
        if mode == HYBRID and j == count - 1 and rates[5] > 0:
            # the layer's end, as the host sees it, with this miss whole on either side
            whole_on_gpu = max(gpu_seen, cpu)
            whole_on_cpu = max(max(gpu_path - rates[7], issued), cpu_finish)
            cpu_from = cpu + (cpu_overhead_s if first_on_cpu else 0.0)
            gpu_share[j] = _split_share(n, link, gpu_path, cpu_from, min(whole_on_gpu, whole_on_cpu), cpu_s, gpu_s, rates, gpu_share[j])
        if on_gpu:
            gpu_path, link = gpu_finish, copied_at
            issued += launch_s
            cpu += launch_s
        else:
            cpu = cpu_finish
            background += admitted[j]
            first_on_cpu = False
    # charge
    copies = 0
    on_cpu = 0
    for j in range(count):
        copies += gpu_share[j] > 0 or admitted[j]
        on_cpu += gpu_share[j] < 1
    copy_time = copy_s * (copy_slowdown if on_cpu > 0 else 1.0)
    cpu_time_factor = cpu_slowdown if copies > 0 or link_free > ready else 1.0
    link = max(link_free, ready)
    link_busy = 0.0
    for j in range(count):
        n = tokens[j]
        copy_end[j] = -1.0
        if gpu_share[j] > 0:
            link += gpu_share[j] * copy_time
            link_busy += gpu_share[j] * copy_time
            host += launch_s if gpu_share[j] == 1.0 else rates[6]
            copy_end[j] = link
            spent[3] += max(0.0, link - gpu)
            spent[1] += gpu_s[n]
            gpu = max(max(gpu, link) + gpu_s[n], host)
    cpu = host + (cpu_overhead_s if on_cpu > 0 else 0.0)
    spent[0] += cpu - host
    for j in range(count):
        if gpu_share[j] < 1:
            on_cpu_s = cpu_s[tokens[j]] * cpu_time_factor * (1.0 - gpu_share[j]) * (rates[8] if gpu_share[j] > 0 else 1.0)
            spent[0] += on_cpu_s
            cpu += on_cpu_s
            if gpu_share[j] > 0:  # split: the GPU finishes the expert once the CPU's units are in
                gpu = max(gpu, cpu + gpu_s[tokens[j]])
            if admitted[j]:
                link += copy_time * (1.0 - gpu_share[j])
                link_busy += copy_time * (1.0 - gpu_share[j])
                copy_end[j] = link
    spent[2] += link_busy
    return gpu, cpu, link if copies else link_free


@njit(cache=True, error_model="numpy", inline="always")
def _split_share(n, starts, gpu_from, cpu, whole_finish, cpu_s, gpu_s, rates, whole_share):
    """The GPU's share of a miss split across both paths, or ``whole_share`` when a split would
    not let the host go on sooner (``whole_finish``: the sooner of the layer's ends with the miss
    whole, each as the host sees it). Its copy starts when the link is free (``starts``), its CPU
    share when the CPU is (``cpu``, the CPU path's cost paid) and the host has set the split going
    (``split_launch_s``, host work before any CPU work). The copy of the GPU's share and the CPU's
    work run at the same time, so both are slowed; the CPU's share also at its own rate (``split_cpu_scale``)."""
    copy = rates[0] * rates[2]
    on_cpu = cpu_s[n] * rates[1] * rates[8]
    cpu_starts = cpu + rates[6]
    # the copy of the GPU's share ends at starts + f * copy, the CPU's share at cpu_starts + (1 - f) * on_cpu
    share = max((cpu_starts + on_cpu - starts) / (copy + on_cpu), rates[5])
    if share > 1.0 - MIN_CPU_SHARE:
        return whole_share
    cpu_done = cpu_starts + (1.0 - share) * on_cpu
    finish = max(max(gpu_from, starts + share * copy), cpu_done) + gpu_s[n]
    return share if max(finish - rates[7], cpu_done) < whole_finish else whole_share
