"""The roofline of a run: the shortest time any schedule could take for its hits and misses.

For each (pass, layer) the cache state is what the run had; what is free is where each miss is
computed. The bound is the dense work plus the slower of two perfectly overlapped paths: the CPU
computing some misses one after another, and the GPU computing the hits and the other misses
after their copies (copies back to back on the link). When the model's experts can be split
(``Profile.split_min_gpu_share`` > 0), one miss may be shared between the two paths, the GPU
taking at least that share of it, as the runtime can (the layer's last miss, there).
The GPU's work may run on behind the host into the next layer's dense work, by as much as the
machine lets the host go ahead (``Profile.dense_overlap_ms``); the CPU's may not, as it holds the
host. Dispatch overhead is left out on purpose, and so is the generation loop's time between
passes (``Profile.step_overhead_ms``): it is what a real runtime loses, and the gap to this bound
is what there is left to win.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from expertcache.simulator.costs import Profile
from expertcache.simulator.engine import HIT, ReplayInput


@dataclass(frozen=True)
class Roofline:
    prefill_s: float
    decode_s: float
    decode_tokens: int

    @property
    def tokens_per_s(self) -> float:
        """Decode tokens per second at the bound."""
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0


def roofline(replay: ReplayInput, outcome: np.ndarray, profile: Profile, threads: int) -> Roofline:
    """The bound for ``replay`` whose accesses had ``outcome`` (``simulate(..., keep_outcome=True)``)."""
    meta = replay.meta
    max_tokens = int(replay.group_tokens.max())
    cpu_s = profile.cpu_table_s(threads, meta.expert_bytes, max_tokens)
    gpu_s = profile.gpu_table_s(meta.expert_bytes, max_tokens)
    dense_s = profile.dense_table_s(max_tokens)
    copy_s = profile.copy_s(meta.expert_bytes)
    totals = [0.0, 0.0]
    for g in range(len(replay.group_start) - 1):
        dense = dense_s[replay.group_tokens[g]]
        hidden = min(profile.dense_overlap_ms / 1e3, dense)  # GPU time behind the host's next dense work
        span = slice(replay.group_start[g], replay.group_start[g + 1])
        experts, first, tokens = np.unique(replay.expert[span], return_index=True, return_counts=True)
        resident = outcome[span][first] == HIT
        hits_s = gpu_s[tokens[resident]].sum()
        missed = tokens[~resident]
        # misses that gain most from the CPU go there first; every prefix is tried
        missed = missed[np.argsort(cpu_s[missed] / (copy_s + gpu_s[missed]))]
        best = np.inf
        for on_cpu in range(len(missed) + 1):
            cpu_path = cpu_s[missed[:on_cpu]].sum()
            fetched = missed[on_cpu:]
            gpu_compute = hits_s + gpu_s[fetched].sum()
            gpu_path = gpu_compute
            if len(fetched):
                gpu_path = max(gpu_path, len(fetched) * copy_s + gpu_s[fetched[-1]])
            best = min(best, max(cpu_path, gpu_path - hidden))
            if profile.split_min_gpu_share > 0 and len(fetched):  # the first fetched one shared: share f copied first
                shared, after = fetched[0], fetched[1:]
                tail = gpu_s[after[-1] if len(after) else shared]
                f = (cpu_path + cpu_s[shared] - len(after) * copy_s - tail + hidden) / (cpu_s[shared] + copy_s)
                f = min(max(f, profile.split_min_gpu_share), 1.0)
                link_path = (len(after) + f) * copy_s + tail
                best = min(best, max(cpu_path + (1 - f) * cpu_s[shared], gpu_compute - hidden, link_path - hidden))
        totals[int(replay.group_decode[g])] += dense + max(best, 0.0)
    return Roofline(prefill_s=totals[0], decode_s=totals[1], decode_tokens=replay.decode_tokens)
