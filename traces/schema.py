"""Columns, types and metadata of a trace, and the checks every reader applies.

One row is one expert access: (request, position, layer, rank) → expert, router weight.
The file-level metadata (schema key ``expertcache``) says what model produced it, so a
trace alone is enough to size a cache and replay it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from expertcache.errors import TraceError

FORMAT_VERSION = 1
METADATA_KEY = b"expertcache"
PHASES = ("prefill", "decode")

TRACE_SCHEMA = pa.schema(
    [
        ("request", pa.int32()),
        ("position", pa.int32()),
        ("phase", pa.string()),
        ("layer", pa.int16()),
        ("rank", pa.int8()),
        ("expert", pa.int16()),
        ("weight", pa.float32()),
    ]
)


@dataclass
class TraceMeta:
    """What a trace says about the model and the run that produced it."""

    model: str
    num_layers: int
    moe_layers: list[int]
    num_experts: int
    top_k: int
    expert_bytes: int
    dtype: str = "bfloat16"
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    runtime: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        problems = []
        if self.num_layers < 1:
            problems.append(f"num_layers={self.num_layers} must be at least 1")
        if self.num_experts < 1:
            problems.append(f"num_experts={self.num_experts} must be at least 1")
        if not 1 <= self.top_k <= max(self.num_experts, 1):
            problems.append(f"top_k={self.top_k} must be between 1 and num_experts={self.num_experts}")
        if self.expert_bytes < 1:
            problems.append(f"expert_bytes={self.expert_bytes} must be positive")
        if not self.moe_layers or any(not 0 <= layer < self.num_layers for layer in self.moe_layers):
            problems.append(f"moe_layers must be a non-empty list of layers below num_layers={self.num_layers}")
        if problems:
            raise TraceError("invalid trace metadata: " + "; ".join(problems))

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_schema(cls, schema: pa.Schema) -> "TraceMeta":
        raw = (schema.metadata or {}).get(METADATA_KEY)
        if raw is None:
            raise TraceError("not an expertcache trace: the Parquet schema has no 'expertcache' metadata")
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise TraceError(f"the 'expertcache' metadata is not JSON: {exc}") from None
        known = {f for f in cls.__dataclass_fields__}
        missing = {"model", "num_layers", "moe_layers", "num_experts", "top_k", "expert_bytes"} - set(data)
        if missing:
            raise TraceError(f"trace metadata lacks {', '.join(sorted(missing))}")
        if data.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise TraceError(f"trace format_version {data['format_version']} is newer than this expertcache reads ({FORMAT_VERSION})")
        return cls(**{k: v for k, v in data.items() if k in known})

    def schema(self) -> pa.Schema:
        return TRACE_SCHEMA.with_metadata({METADATA_KEY: self.to_json()})


def validate_columns(schema: pa.Schema) -> None:
    """Raise TraceError unless every documented column is present with its documented type."""
    for expected in TRACE_SCHEMA:
        if expected.name not in schema.names:
            raise TraceError(f"trace lacks column '{expected.name}' ({expected.type})")
        actual = schema.field(expected.name).type
        if actual != expected.type:
            raise TraceError(f"trace column '{expected.name}' is {actual}, expected {expected.type}")


def validate_rows(frame: pd.DataFrame, meta: TraceMeta) -> None:
    """Raise TraceError at the first row that breaks a range rule, naming the rule and the row."""
    if frame.empty:
        raise TraceError("trace has no rows")
    checks = [
        ("expert", (frame.expert < 0) | (frame.expert >= meta.num_experts), f"expert must be in [0, {meta.num_experts})"),
        ("rank", (frame["rank"] < 0) | (frame["rank"] >= meta.top_k), f"rank must be in [0, {meta.top_k})"),
        ("layer", ~frame.layer.isin(meta.moe_layers), "layer must be one of the metadata's moe_layers"),
        ("phase", ~frame.phase.isin(PHASES), "phase must be 'prefill' or 'decode'"),
        ("request", frame.request < 0, "request must be non-negative"),
        ("position", frame.position < 0, "position must be non-negative"),
        ("weight", ~np.isfinite(frame.weight.to_numpy()), "weight must be finite"),
    ]
    for column, bad, rule in checks:
        bad = np.asarray(bad)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            value = frame[column].iloc[row]
            value = value.item() if hasattr(value, "item") else value
            raise TraceError(f"row {row}: {column}={value!r} is out of range ({rule}); {int(bad.sum())} of {len(frame)} rows break it")
    duplicated = frame.duplicated(["request", "position", "layer", "rank"])
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise TraceError(f"row {row}: (request, position, layer, rank) appears twice")
