"""Writing and reading trace files.

A recording appends row groups while the model generates. Parquet only becomes readable once
its footer is written, so the writer first appends record batches to an Arrow IPC stream
(``<trace>.partial``), which is readable up to its last complete batch even if the process is
killed, and turns it into the Parquet file (one row group per batch) when it is closed.
``read_trace`` reads either, so a recording cut short loses at most its last batch. The
Parquet file coalesces the journal's many small batches into row groups of up to
``ROW_GROUP_ROWS`` rows, which keeps it compact and quick to scan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from expertcache.errors import TraceError
from expertcache.traces.schema import TRACE_SCHEMA, TraceMeta, validate_columns, validate_rows

PARTIAL_SUFFIX = ".partial"
ROW_GROUP_ROWS = 1 << 20


@dataclass
class Trace:
    """A validated trace: its metadata and its rows as a pandas DataFrame."""

    meta: TraceMeta
    frame: pd.DataFrame
    path: Path | None = None

    @property
    def num_accesses(self) -> int:
        return len(self.frame)

    def write(self, path: str | os.PathLike) -> Path:
        """Write this trace to ``path`` as a trace file (through ``TraceWriter``, as a recording does)."""
        with TraceWriter(path, self.meta) as writer:
            writer.append(**{name: self.frame[name].to_numpy() for name in TRACE_SCHEMA.names})
        return writer.path

    def in_execution_order(self) -> pd.DataFrame:
        """Rows in the order the model touches experts, with a global forward-pass index ``step``.

        Per request the whole prefill is one forward pass (layer by layer, and inside a layer
        position by position, rank by rank); each decode position is a pass of its own.
        """
        frame = self.frame
        is_decode = (frame.phase == "decode").to_numpy()
        pass_in_request = np.where(is_decode, frame.position.to_numpy().astype(np.int64), -1)
        ordered = frame.assign(_pass=pass_in_request).sort_values(
            ["request", "_pass", "layer", "position", "rank"], kind="stable"
        )
        boundary = np.ones(len(ordered), dtype=bool)
        req = ordered.request.to_numpy()
        pas = ordered._pass.to_numpy()
        boundary[1:] = (req[1:] != req[:-1]) | (pas[1:] != pas[:-1])
        step = np.cumsum(boundary) - 1
        return ordered.drop(columns="_pass").assign(step=step).reset_index(drop=True)


class TraceWriter:
    """Appends expert accesses to a trace file; safe to kill at any moment.

    >>> meta = TraceMeta(model="tiny", num_layers=2, moe_layers=[0, 1], num_experts=4, top_k=2, expert_bytes=1024)
    >>> with TraceWriter("run.parquet", meta) as writer:       # doctest: +SKIP
    ...     writer.append(request=[0, 0], position=[5, 5], phase="decode", layer=[0, 0],
    ...                   rank=[0, 1], expert=[3, 1], weight=[0.7, 0.3])
    """

    def __init__(self, path: str | os.PathLike, meta: TraceMeta) -> None:
        self.path = Path(path)
        self.partial_path = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self.meta = meta
        self._schema = meta.schema()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sink = pa.OSFile(str(self.partial_path), "wb")
        self._stream = pa.ipc.new_stream(self._sink, self._schema)
        self.rows_written = 0

    def append(self, **columns) -> None:
        """Append one batch of rows; scalars (e.g. ``phase="decode"``) are broadcast."""
        lengths = {len(v) for v in columns.values() if np.ndim(v) > 0}
        if len(lengths) != 1:
            raise TraceError(f"columns of one batch must have one length, got {sorted(lengths)}")
        (length,) = lengths
        arrays = []
        for field in TRACE_SCHEMA:
            value = columns[field.name]
            if np.ndim(value) == 0:
                value = [value] * length
            arrays.append(pa.array(value, type=field.type))
        batch = pa.RecordBatch.from_arrays(arrays, schema=self._schema)
        self._stream.write_batch(batch)
        self._sink.flush()
        self.rows_written += length

    def close(self) -> Path:
        """Turn the journal into the Parquet file and delete the journal."""
        self._stream.close()
        self._sink.close()
        table = _read_partial(self.partial_path)
        pq.write_table(table, self.path, row_group_size=ROW_GROUP_ROWS)
        self.partial_path.unlink()
        return self.path

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_partial(path: Path) -> pa.Table:
    """Every complete record batch of an IPC stream, ignoring a torn last one."""
    batches = []
    with pa.OSFile(str(path), "rb") as source:
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid as exc:
            raise TraceError(f"{path}: the recording was cut before its first batch ({exc})") from None
        schema = reader.schema
        while True:
            try:
                batches.append(reader.read_next_batch())
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError):
                break
    return pa.Table.from_batches(batches, schema=schema)


def _read_table(path: Path) -> pa.Table:
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    if not path.exists():
        if partial.exists():
            return _read_partial(partial)
        raise TraceError(f"{path}: no such trace file")
    if path.is_dir():
        raise TraceError(f"{path}: is a directory, expected a Parquet trace file")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise TraceError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None


def read_trace(path: str | os.PathLike, validate: bool = True) -> Trace:
    """Read a trace (or the journal of a recording that was cut short) and check it.

    Raises :class:`expertcache.errors.TraceError` with one clear sentence on any problem.
    """
    path = Path(path)
    table = _read_table(path)
    meta = TraceMeta.from_schema(table.schema)
    validate_columns(table.schema)
    frame = table.select([f.name for f in TRACE_SCHEMA]).to_pandas()
    frame["phase"] = frame.phase.astype(str)
    if validate:
        validate_rows(frame, meta)
    return Trace(meta=meta, frame=frame, path=path)


def sample_trace_path() -> Path:
    """The small trace shipped with the package, used when a command is given no trace."""
    return Path(str(resources.files("expertcache.traces") / "sample" / "sample.parquet"))
