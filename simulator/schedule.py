"""Where each missed expert of a layer is computed: one decision rule for the simulator and the runtime.

A miss can run on the CPU from its host copy, or on the GPU once its weights are copied over the
PCIe link (into the slot the cache gave it, or into a staging slot when the policy did not keep
it). On the lent H100 host one expert copies (6.5 ms) about as fast as the CPU computes it
(7.3 ms), so sending one of a layer's two misses each way nearly halves the layer, which is what
HybriMoE's intra-layer scheduling does. The rule is greedy, in the order the misses are handed
in: each goes where it would finish first given what the two paths already hold. The simulator
calls it with its clocks; the runtime with its own estimate of the link and the profile's rates.
"""

from __future__ import annotations

from numba import njit

CPU_ONLY, HYBRID, GPU_ONLY = 0, 1, 2
"""How misses may be placed: the CPU always (static placements), whichever finishes first
(expertcache), the GPU always (on-demand fetching)."""


@njit(cache=True, error_model="numpy")
def split_misses(
    tokens, admitted, mode, ready, gpu, link_free, cpu_s, gpu_s, copy_s, cpu_slowdown, copy_slowdown, on_gpu, copy_end, spent
):
    """Place a layer's misses and advance the clocks; returns ``(gpu, cpu, link_free)``.

    ``tokens[j]``: rows of miss ``j``; ``admitted[j]``: the cache gave it a slot, so it is copied
    whichever way it runs. ``ready``: when routing is known (CPU work and copies start no
    earlier); ``gpu``: when the GPU path is free; ``link_free``: when queued copies end.
    ``cpu_s``/``gpu_s``: seconds for one expert by row count. Copies and CPU experts both read
    host memory: while both run, CPU experts take ``cpu_slowdown`` times as long and copies
    ``copy_slowdown`` times. Copies that a GPU computation waits for go first; those of kept
    misses computed on the CPU queue behind them.

    Each miss is placed greedily where it would finish first, judged at its turn; then the
    layer is charged with every placement known (a copy is slowed when the layer has CPU work,
    which a later miss may add). Writes ``on_gpu[j]`` and ``copy_end[j]`` (-1 when not copied)
    and adds CPU-busy, GPU-busy, link-busy and stall seconds to ``spent[0:4]``.
    """
    count = len(tokens)
    # decide
    cpu, link, gpu_path, background = ready, max(link_free, ready), gpu, 0
    for j in range(count):
        n = tokens[j]
        copied_at = link + copy_s * (copy_slowdown if cpu > link else 1.0)
        gpu_finish = max(gpu_path, copied_at) + gpu_s[n]
        copying = link > cpu or background > 0 or admitted[j]
        cpu_finish = cpu + cpu_s[n] * (cpu_slowdown if copying else 1.0)
        on_gpu[j] = mode == GPU_ONLY or (mode == HYBRID and gpu_finish < cpu_finish)
        if on_gpu[j]:
            gpu_path, link = gpu_finish, copied_at
        else:
            cpu = cpu_finish
            background += admitted[j]
    # charge
    copies = 0
    on_cpu = 0
    for j in range(count):
        copies += on_gpu[j] or admitted[j]
        on_cpu += not on_gpu[j]
    copy_time = copy_s * (copy_slowdown if on_cpu > 0 else 1.0)
    cpu_time_factor = cpu_slowdown if copies > 0 or link_free > ready else 1.0
    cpu, link = ready, max(link_free, ready)
    for j in range(count):
        n = tokens[j]
        copy_end[j] = -1.0
        if on_gpu[j]:
            link += copy_time
            copy_end[j] = link
            spent[3] += max(0.0, link - gpu)
            spent[1] += gpu_s[n]
            gpu = max(gpu, link) + gpu_s[n]
        else:
            spent[0] += cpu_s[n] * cpu_time_factor
            cpu += cpu_s[n] * cpu_time_factor
    for j in range(count):
        if admitted[j] and not on_gpu[j]:
            link += copy_time
            copy_end[j] = link
    spent[2] += copies * copy_time
    return gpu, cpu, link if copies else link_free
