"""Cost model: the measured rates of one machine, and the times derived from them.

A :class:`Profile` holds nothing but measurements (``expertcache calibrate`` writes one on the
machine at hand; two are built in). Expert times scale with the expert's bytes, because a
one-token expert FFN reads its weights once and is bound by memory bandwidth.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path

import numpy as np

from expertcache.errors import ConfigError
from expertcache.jsonfile import read_json_object

BUILTIN_PROFILES = {
    "h100": "the lent H100 80 GB machine: PCIe 5.0, 16-core Xeon with AMX (medians of its calibrations, Mixtral shape)",
    "desktop-4090": "the seed paper's desktop: RTX 4090 on PCIe 4.0, 24 CPU cores",
}


ONEDNN = "onednn"
"""One-row CPU experts on torch's own choice of kernel: oneDNN where the CPU supports the dtype."""
TORCH = "torch"
"""One-row CPU experts on torch's native kernel, oneDNN switched off around them (``runtime.cpu_kernel``)."""
ONE_ROW_KERNELS = (ONEDNN, TORCH)


@dataclass
class Profile:
    """Measured component rates of one machine for one expert shape.

    Tables are keyed by token count (and thread count for the CPU) and interpolated linearly
    between measured points, extrapolated proportionally beyond the last one.
    """

    name: str
    expert_bytes: int
    h2d_gbps: float
    cpu_expert_ms: dict[int, dict[int, float]]  # threads → tokens → ms
    gpu_expert_ms: dict[int, float]  # tokens → ms
    dense_ms: dict[int, float]  # tokens → ms per decoder layer (attention, norms, router)
    layer_overhead_ms: float  # per MoE layer: dispatch, synchronisation, Python
    cpu_slowdown_during_copy: float = 1.0  # CPU expert time factor while a copy shares memory bandwidth
    copy_slowdown_during_cpu: float = 1.0  # copy time factor while CPU experts share memory bandwidth
    gpu_launch_ms: float = 0.0  # host time to queue one GPU expert (the host queues them before CPU work)
    cpu_path_overhead_ms: float = 0.0  # per layer computing any expert on the CPU: input to the host, outputs back
    split_min_gpu_share: float = 1 / 3  # a split miss leaves the GPU at least this share of its bytes (runtime.split); 0: no splits
    # host time to run a split besides its CPU share: its copies, the GPU's kernels, the CPU's activations
    # sent over (runtime.split); None: priced as one GPU launch (profiles calibrated before it was measured)
    split_launch_ms: float | None = None
    # of a layer's dense time, the host's part that runs while the GPU still works through the previous
    # layer's queued copies and experts: the host only waits for the GPU at the next routing
    dense_overlap_ms: float = 0.0
    # per decode step, the generation loop's own time between forward passes (its logits processing,
    # stopping check and next inputs): a cost every system pays, one a per-layer figure cannot hold
    step_overhead_ms: float = 0.0
    # per online policy, host ms the cache core takes to decide one layer visit with `decision_slots`
    # slots: [fully associative, direct-mapped] (simulator.decision_time); empty: decisions cost nothing
    # (profiles calibrated before they were measured, and the built-in ones)
    decision_ms: dict[str, list[float]] = field(default_factory=dict)
    decision_slots: int = 0
    # threads → the kernel a one-row CPU expert ran on when its time was measured, the faster of
    # ONE_ROW_KERNELS there (runtime.cpu_kernel); a thread count not in it: ONEDNN, torch's choice
    one_row_kernel: dict[int, str] = field(default_factory=dict)
    notes: str = ""

    def __post_init__(self) -> None:
        self.cpu_expert_ms = {int(t): {int(n): float(ms) for n, ms in row.items()} for t, row in self.cpu_expert_ms.items()}
        self.gpu_expert_ms = {int(n): float(ms) for n, ms in self.gpu_expert_ms.items()}
        self.dense_ms = {int(n): float(ms) for n, ms in self.dense_ms.items()}
        self.decision_ms = {str(policy): [float(ms) for ms in pair] for policy, pair in self.decision_ms.items()}
        self.one_row_kernel = {int(t): str(kernel) for t, kernel in self.one_row_kernel.items()}
        if not set(self.one_row_kernel.values()) <= set(ONE_ROW_KERNELS):
            raise ConfigError(f"profile '{self.name}': one_row_kernel names one of {', '.join(ONE_ROW_KERNELS)} per thread count")
        if any(len(pair) != 2 for pair in self.decision_ms.values()):
            raise ConfigError(f"profile '{self.name}': decision_ms holds [fully associative, direct-mapped] per policy")
        if self.h2d_gbps <= 0 or self.expert_bytes <= 0:
            raise ConfigError(f"profile '{self.name}': h2d_gbps and expert_bytes must be positive")
        if not self.cpu_expert_ms or not self.gpu_expert_ms or not self.dense_ms:
            raise ConfigError(f"profile '{self.name}': cpu_expert_ms, gpu_expert_ms and dense_ms need at least one point")

    @property
    def thread_counts(self) -> list[int]:
        return sorted(self.cpu_expert_ms)

    def nearest_thread_count(self, threads: int) -> int:
        """The measured thread count that prices CPU experts run with ``threads`` (the larger on a tie)."""
        return nearest_thread_count(self.thread_counts, threads)

    def one_row_kernel_at(self, threads: int) -> str:
        """The kernel a one-row CPU expert runs on with ``threads`` threads: the one its price was measured on."""
        return self.one_row_kernel.get(self.nearest_thread_count(threads), ONEDNN)

    def copy_s(self, expert_bytes: int) -> float:
        """Seconds to copy one expert host→device over the pinned path."""
        return expert_bytes / (self.h2d_gbps * 1e9)

    def check_threads(self, threads: Iterable[int]) -> None:
        """Refuse thread counts this profile has no CPU timings for."""
        missing = [count for count in threads if count not in self.cpu_expert_ms]
        if missing:
            raise ConfigError(
                f"profile '{self.name}' has no CPU timings for {', '.join(map(str, missing))} threads; it has {self.thread_counts}"
            )

    def cpu_table_s(self, threads: int, expert_bytes: int, max_tokens: int) -> np.ndarray:
        """CPU seconds for one expert at 0..max_tokens tokens, with ``threads`` threads."""
        self.check_threads([threads])
        return _table(self.cpu_expert_ms[threads], max_tokens) * (expert_bytes / self.expert_bytes) / 1e3

    def gpu_table_s(self, expert_bytes: int, max_tokens: int) -> np.ndarray:
        return _table(self.gpu_expert_ms, max_tokens) * (expert_bytes / self.expert_bytes) / 1e3

    def dense_table_s(self, max_tokens: int) -> np.ndarray:
        return _table(self.dense_ms, max_tokens) / 1e3

    def decision_s(self, policy: str, sets: int, ways: int) -> float:
        """Host seconds the cache core takes to decide one layer visit under ``policy`` with ``sets`` x
        ``ways`` slots; 0 where the policy was not measured. The direct-mapped time is taken as upkeep
        per slot (markov's evidence), scaled to these slots; what the fully associative cache adds, as
        the scan of a set's ways on a miss, scaled to these ways."""
        if policy not in self.decision_ms or self.decision_slots < 1:
            return 0.0
        full_ms, direct_ms = self.decision_ms[policy]
        per_way_ms = max(full_ms - direct_ms, 0.0) / max(self.decision_slots - 1, 1)
        return (direct_ms * sets * ways / self.decision_slots + per_way_ms * (ways - 1)) / 1e3

    def with_cpu_slower(self, factor: float) -> "Profile":
        """This profile with every CPU expert time ``factor`` times longer: the machine's CPU as
        measured now (``calibrate.cpu_expert_ms``) against when the profile was taken."""
        return replace(self, cpu_expert_ms={t: {n: ms * factor for n, ms in row.items()} for t, row in self.cpu_expert_ms.items()})

    def with_cpu_at(self, threads: int, one_token_ms: float) -> "Profile":
        """This profile with its CPU as measured later: one token's expert at ``threads`` taking
        ``one_token_ms``, every CPU time scaled alike (``with_cpu_slower``)."""
        return self.with_cpu_slower(one_token_ms / self.cpu_expert_ms[threads][1])

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> "Profile":
        data = read_json_object(path, "profile")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"{path}: not a profile ({exc})") from None


def nearest_thread_count(counts: Iterable[int], threads: int) -> int:
    """Of measured thread ``counts``, the one nearest ``threads`` (the larger on a tie)."""
    return min(counts, key=lambda count: (abs(count - threads), -count))


def _table(points: dict[int, float], max_tokens: int) -> np.ndarray:
    """Milliseconds at 0..max_tokens tokens from measured points (0 tokens costs nothing)."""
    xs = np.array(sorted(points), dtype=np.float64)
    ys = np.array([points[int(x)] for x in xs], dtype=np.float64)
    tokens = np.arange(max_tokens + 1, dtype=np.float64)
    values = np.interp(tokens, xs, ys)
    beyond = tokens > xs[-1]
    values[beyond] = ys[-1] * tokens[beyond] / xs[-1]
    values[0] = 0.0
    return values


def load_profile(name_or_path: str | Path | None) -> Profile:
    """A built-in profile by name (default ``h100``) or a calibrated one from a JSON file."""
    name = "h100" if name_or_path is None else str(name_or_path)
    if name in BUILTIN_PROFILES:
        return Profile.from_json(Path(str(resources.files("expertcache.simulator") / "profiles" / f"{name}.json")))
    if not Path(name).exists():
        raise ConfigError(f"no profile '{name}': give a JSON file or one of {', '.join(BUILTIN_PROFILES)}")
    return Profile.from_json(name)
