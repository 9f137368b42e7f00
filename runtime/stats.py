"""What the runtime measured: hits and misses per layer, and where the time went.

Decode layers are also timed by kind (``LAYER_KINDS``: how their misses ran), each against
what the miss rule planned for it, so a run whose speed departs from the simulator's shows which
kind of layer the difference comes from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

LAYER_KINDS = ("hits", "gpu", "cpu", "hybrid", "split")
"""How a layer's misses ran (``offload.LayerPlan.kind``): none missed; all copied then computed on
the GPU; all on the CPU; some each way; one miss split between the two (the others either way)."""


@dataclass
class RuntimeStats:
    """Counters of one loaded model; ``model.expertcache.stats`` while it runs."""

    num_layers: int
    layer_hits: np.ndarray = field(init=False)
    layer_misses: np.ndarray = field(init=False)
    layer_cpu_s: np.ndarray = field(init=False)
    layer_gpu_s: np.ndarray = field(init=False)
    copies: int = 0  # experts copied into slots
    bypassed: int = 0  # misses the policy chose not to cache
    fetched: int = 0  # misses computed on the GPU after their copy
    staged: int = 0  # of those, misses the policy did not keep, copied into a staging slot
    cpu_experts: int = 0  # misses computed on the CPU, one per expert and layer pass whatever its rows
    split: int = 0  # misses computed partly on the GPU and partly on the CPU (runtime.split)
    copy_waits: int = 0  # hits whose copy had not landed when the layer ran
    copy_wait_s: float = 0.0  # GPU time spent waiting for those copies
    output_queue_s: float = 0.0  # host time queueing the copies of CPU results to the GPU
    layer_times: dict[str, "LayerTimes"] = field(default_factory=dict)  # timed decode layers by kind
    prefill_tokens: int = 0
    decode_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("layer_hits", "layer_misses"):
            setattr(self, name, np.zeros(self.num_layers, dtype=np.int64))
        for name in ("layer_cpu_s", "layer_gpu_s"):
            setattr(self, name, np.zeros(self.num_layers, dtype=np.float64))

    @property
    def hits(self) -> int:
        return int(self.layer_hits.sum())

    @property
    def misses(self) -> int:
        return int(self.layer_misses.sum())

    @property
    def hit_rate(self) -> float:
        return self.hits / max(self.hits + self.misses, 1)

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0

    def add_layer_time(self, kind: str, wall_s: float, planned_s: float, host_s: float) -> None:
        """Count one decode layer of ``kind`` that took ``wall_s`` where ``planned_s`` was priced,
        ``host_s`` of it in the experts function."""
        self.layer_times[kind] = self.layer_times.get(kind, LayerTimes()) + LayerTimes(1, wall_s, planned_s, host_s)

    def layer_hit_rate(self) -> list[float | None]:
        total = self.layer_hits + self.layer_misses
        return [float(h / t) if t else None for h, t in zip(self.layer_hits, total)]

    def summary(self) -> dict:
        return {
            "hits": self.hits, "misses": self.misses, "hit_rate": self.hit_rate, "bypassed": self.bypassed,
            "copies": self.copies, "fetched": self.fetched, "cpu_experts": self.cpu_experts, "split": self.split, "staged": self.staged, "copy_waits": self.copy_waits, "copy_wait_s": self.copy_wait_s,
            "prefill_tokens": self.prefill_tokens, "prefill_s": self.prefill_s,
            "decode_tokens": self.decode_tokens, "decode_s": self.decode_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "cpu_expert_s": float(self.layer_cpu_s.sum()), "gpu_expert_s": float(self.layer_gpu_s.sum()),
            "output_queue_s": self.output_queue_s,
            "layers_by_kind": {kind: asdict(times) for kind, times in sorted(self.layer_times.items())},
        }  # fmt: skip


@dataclass
class LayerTimes:
    """Decode layers of one kind, summed: from each one's routing to the next MoE layer's routing,
    measured (``wall_s``) and as the miss rule priced it (``planned_s``), and the host's part of it
    in the experts function (``host_s``: planning, queueing GPU work, CPU experts, results back)."""

    layers: int = 0
    wall_s: float = 0.0
    planned_s: float = 0.0
    host_s: float = 0.0

    def __add__(self, other: "LayerTimes") -> "LayerTimes":
        # field by field: end_pass adds one per decode layer, where astuple's deep copy cost 9 us
        return LayerTimes(
            self.layers + other.layers, self.wall_s + other.wall_s, self.planned_s + other.planned_s, self.host_s + other.host_s
        )

    def describe(self) -> str:
        """Count, then milliseconds per layer: measured / priced (host's part)."""
        per_layer = 1e3 / self.layers
        return f"{self.layers:,}: {self.wall_s * per_layer:.2f} / {self.planned_s * per_layer:.2f} (host {self.host_s * per_layer:.2f})"
