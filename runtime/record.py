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

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from expertcache.traces.io import TraceWriter
from expertcache.traces.schema import TraceMeta


def sibling(trace_path: str | Path, kind: str) -> Path:
    """``run.parquet`` → ``run.<kind>.parquet``."""
    path = Path(trace_path)
    return path.with_name(f"{path.stem}.{kind}{path.suffix or '.parquet'}")


class Recorder:
    """Attach to ``model.expertcache.recorder``; close to finish the files."""

    def __init__(self, path: str | Path, runtime, model_name: str) -> None:
        self.path = Path(path)
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
        self.accesses: list[pd.DataFrame] = []

    def on_pass(self, runtime, wall_s: float, layers: list) -> None:
        if not layers:
            return
        tokens, top_k = layers[0].index.shape
        positions = np.arange(runtime.position, runtime.position + tokens, dtype=np.int32)
        phase = "decode" if runtime._pass_is_decode else "prefill"
        columns = {k: [] for k in ("layer", "position", "rank", "expert", "weight", "hit", "slot")}
        for record in layers:
            columns["layer"].append(np.full(tokens * top_k, record.layer, dtype=np.int16))
            columns["position"].append(np.repeat(positions, top_k))
            columns["rank"].append(np.tile(np.arange(top_k, dtype=np.int8), tokens))
            columns["expert"].append(record.index.reshape(-1).astype(np.int16))
            columns["weight"].append(record.weights.reshape(-1).astype(np.float32))
            columns["hit"].append(record.hit)
            columns["slot"].append(record.slot.astype(np.int32))
            self.timing.append({
                "step": runtime.step, "request": runtime.request, "position": int(positions[0]), "phase": phase,
                "tokens": tokens, "layer": record.layer, "pass_wall_s": wall_s, "cpu_s": record.cpu_s,
                "gpu_s": record.gpu_s, "copy_wait_s": record.copy_wait_s, "output_queue_s": record.output_queue_s,
                "hits": int(record.hit.sum()), "misses": int((~record.hit).sum()),
                "kind": record.kind, "wall_s": record.wall_s, "planned_s": record.planned_s, "host_s": record.host_s,
                "cpu_priced_s": record.cpu_priced_s, "split_share": record.split_share,
            })  # fmt: skip
        flat = {k: np.concatenate(v) for k, v in columns.items()}
        self.writer.append(
            request=np.full(len(flat["layer"]), runtime.request, dtype=np.int32), position=flat["position"],
            phase=phase, layer=flat["layer"], rank=flat["rank"], expert=flat["expert"], weight=flat["weight"],
        )  # fmt: skip
        self.accesses.append(
            pd.DataFrame({"step": runtime.step, "request": runtime.request, **{k: flat[k] for k in ("position", "layer", "rank", "expert", "hit", "slot")}})
        )

    def close(self) -> Path:
        self.writer.close()
        pd.DataFrame(self.timing).to_parquet(sibling(self.path, "timing"), index=False)
        if self.accesses:
            pd.concat(self.accesses, ignore_index=True).to_parquet(sibling(self.path, "access"), index=False)
        return self.path
