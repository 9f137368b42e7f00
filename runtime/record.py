"""Recording while generating: the expert trace, plus per-token timing and per-access outcomes.

The trace (documented schema) is appended one forward pass at a time through TraceWriter, so a
killed recording keeps every completed token. Two siblings are written when the recording
closes: ``<name>.timing.parquet`` (one row per pass and MoE layer: wall time of the pass, CPU,
GPU and copy-wait seconds of the layer, hits and misses, how its misses ran, and its time from
routing to the next MoE layer's routing, measured, as the miss rule priced it, and the host's
part; docs/trace-format.md) and ``<name>.access.parquet`` (one row per expert access: whether it
hit, and its slot), which tests compare with the simulator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from expertcache.traces.io import TraceWriter
from expertcache.traces.schema import TraceMeta


def sibling(trace_path: str | Path, kind: str) -> Path:
    """``run.parquet`` → ``run.<kind>.parquet``."""
    path = Path(trace_path)
    return path.with_name(f"{path.stem}.{kind}{path.suffix or '.parquet'}")


@dataclass(frozen=True)
class PassRecord:
    """One forward pass as the runtime closed it: what ``Recorder`` writes."""

    step: int
    request: int
    position: int  # of its first token
    decode: bool
    wall_s: float
    layers: list  # offload.LayerPass, one per MoE layer


class Recorder:
    """Attach to ``model.expertcache.recorder``; close to finish the files.

    A recording is written as it goes, each pass flushed, so that one cut short keeps every
    completed token. The bench's recordings only price the run they record, once it is over:
    with ``deferred`` each pass is kept as the runtime closed it and written at ``close``. Writing
    runs between two decode passes, which the runtime counts as decoding: with the runtime's own
    bookkeeping, 1.6-2.1 ms a token on shortened OLMoE, Qwen3 and Phi models on the lent H100 host
    (``benchmarks/decode_loop_gpu.py``, BENCHMARKS.md session 22)."""

    def __init__(self, path: str | Path, runtime, model_name: str, deferred: bool = False) -> None:
        self.path = Path(path)
        self.deferred: list[PassRecord] | None = [] if deferred else None
        config = runtime.config
        meta = TraceMeta(
            model=model_name,
            num_layers=runtime.stats.num_layers,
            moe_layers=list(runtime.moe_layers),
            num_experts=runtime.num_experts,
            top_k=runtime.top_k,
            expert_bytes=runtime.layout.nbytes,
            dtype=str(runtime.layout.dtype).removeprefix("torch."),
            runtime={**asdict(config), "threads": runtime.threads, "device": str(runtime.device)},
        )
        self.writer = TraceWriter(self.path, meta)
        self.timing: list[dict] = []
        self.accesses: list[dict[str, np.ndarray]] = []

    def on_pass(self, runtime, wall_s: float, layers: list) -> None:
        """Record the forward pass the runtime is closing: written now, or at ``close`` when deferred."""
        if not layers:
            return
        record = PassRecord(runtime.step, runtime.request, runtime.position, runtime._pass_is_decode, wall_s, layers)
        if self.deferred is not None:
            self.deferred.append(record)
        else:
            self._write(record)

    def _write(self, record: PassRecord) -> None:
        """Append one forward pass: its rows of the trace (flushed, so a recording cut short keeps
        them), its layers' timing and its accesses, each column built once for all its layers."""
        layers, wall_s = record.layers, record.wall_s
        tokens, top_k = layers[0].index.shape
        per_layer = tokens * top_k
        positions = np.arange(record.position, record.position + tokens, dtype=np.int32)
        phase = "decode" if record.decode else "prefill"
        hits = [int(layer.hit.sum()) for layer in layers]
        for layer, hit_count in zip(layers, hits):
            self.timing.append({
                "step": record.step, "request": record.request, "position": record.position, "phase": phase,
                "tokens": tokens, "layer": layer.layer, "pass_wall_s": wall_s, "cpu_s": layer.cpu_s,
                "gpu_s": layer.gpu_s, "copy_wait_s": layer.copy_wait_s, "output_queue_s": layer.output_queue_s,
                "hits": hit_count, "misses": per_layer - hit_count,
                "kind": layer.kind, "wall_s": layer.wall_s, "planned_s": layer.planned_s, "host_s": layer.host_s,
                "cpu_priced_s": layer.cpu_priced_s, "split_share": layer.split_share,
            })  # fmt: skip
        flat = {
            "layer": np.repeat(np.array([layer.layer for layer in layers], dtype=np.int16), per_layer),
            "position": np.tile(np.repeat(positions, top_k), len(layers)),
            "rank": np.tile(np.arange(top_k, dtype=np.int8), tokens * len(layers)),
            "expert": np.concatenate([layer.index.reshape(-1) for layer in layers]).astype(np.int16),
            "weight": np.concatenate([layer.weights.reshape(-1) for layer in layers]).astype(np.float32),
            "hit": np.concatenate([layer.hit for layer in layers]),
            "slot": np.concatenate([layer.slot for layer in layers]).astype(np.int32),
        }
        rows = len(flat["layer"])
        self.writer.append(
            request=np.full(rows, record.request, dtype=np.int32), position=flat["position"],
            phase=phase, layer=flat["layer"], rank=flat["rank"], expert=flat["expert"], weight=flat["weight"],
        )  # fmt: skip
        # kept as arrays until close: a DataFrame a pass held the host about 0.2 ms a token (dev box)
        self.accesses.append({"step": np.full(rows, record.step), "request": np.full(rows, record.request),
                              **{k: flat[k] for k in ("position", "layer", "rank", "expert", "hit", "slot")}})  # fmt: skip

    def close(self) -> Path:
        for record in self.deferred or []:
            self._write(record)
        self.writer.close()
        pd.DataFrame(self.timing).to_parquet(sibling(self.path, "timing"), index=False)
        if self.accesses:
            columns = {name: np.concatenate([part[name] for part in self.accesses]) for name in self.accesses[0]}
            pd.DataFrame(columns).to_parquet(sibling(self.path, "access"), index=False)
        return self.path
