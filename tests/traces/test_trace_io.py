"""Trace files: round trip, the journal of a killed recording, and every validation error."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import decode_rows, tiny_meta, write_trace
from expertcache.errors import TraceError
from expertcache.traces.io import TraceWriter, read_trace, sample_trace_path
from expertcache.traces.schema import TRACE_SCHEMA


def test_round_trip_keeps_rows_types_and_metadata(tmp_path):
    meta = tiny_meta(num_layers=3, num_experts=5, top_k=2)
    meta.runtime = {"sets": 2, "ways": 3}
    rows = decode_rows([[[4, 0], [1, 2], [3, 4]], [[0, 1], [2, 3], [4, 0]]], request=7, first_position=11)
    path = write_trace(tmp_path / "t.parquet", meta, rows)

    trace = read_trace(path)
    assert trace.meta == meta
    assert trace.frame.expert.tolist() == rows["expert"]
    assert trace.frame.position.tolist() == rows["position"]
    assert set(trace.frame.request) == {7}
    assert pq.read_schema(path).remove_metadata() == TRACE_SCHEMA
    assert not (tmp_path / "t.parquet.partial").exists()


def test_many_small_appends_are_coalesced_into_one_row_group(tmp_path):
    batches = [decode_rows([[[t % 4], [1]]], first_position=t) for t in range(50)]
    path = write_trace(tmp_path / "t.parquet", tiny_meta(), *batches)
    assert pq.ParquetFile(path).num_row_groups == 1
    assert read_trace(path).frame.position.tolist() == [t for t in range(50) for _ in range(2)]


def test_recording_killed_with_sigkill_leaves_a_readable_trace(tmp_path):
    path = tmp_path / "killed.parquet"
    script = textwrap.dedent(
        f"""
        import os, signal
        from expertcache.traces.io import TraceWriter
        from expertcache.traces.schema import TraceMeta
        meta = TraceMeta(model="m", num_layers=2, moe_layers=[0, 1], num_experts=4, top_k=1, expert_bytes=10)
        writer = TraceWriter({str(path)!r}, meta)
        for position in range(5):
            writer.append(request=[0, 0], position=[position] * 2, phase="decode", layer=[0, 1],
                          rank=[0, 0], expert=[position % 4, 1], weight=[1.0, 1.0])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == -signal.SIGKILL
    assert not path.exists()
    trace = read_trace(path)
    assert len(trace.frame) == 10
    assert trace.frame.position.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_a_torn_last_batch_is_dropped_and_the_rest_kept(tmp_path):
    path = tmp_path / "torn.parquet"
    writer = TraceWriter(path, tiny_meta())
    writer.append(**decode_rows([[[0], [1]]]))
    writer.append(**decode_rows([[[2], [3]]], first_position=1))
    writer._sink.flush()
    partial = writer.partial_path
    data = partial.read_bytes()
    partial.write_bytes(data[:-20])  # cut inside the second batch
    assert read_trace(path).frame.position.tolist() == [0, 0]


def test_execution_order_puts_prefill_first_layer_major(tmp_path):
    meta = tiny_meta(num_layers=2, num_experts=4, top_k=1)
    prefill = {"request": [0] * 4, "position": [0, 0, 1, 1], "phase": "prefill", "layer": [0, 1, 0, 1],
               "rank": [0] * 4, "expert": [0, 1, 2, 3], "weight": [1.0] * 4}  # fmt: skip
    decode = decode_rows([[[3], [2]]], first_position=2)
    trace = read_trace(write_trace(tmp_path / "t.parquet", meta, decode, prefill))
    ordered = trace.in_execution_order()
    assert list(zip(ordered.layer, ordered.position)) == [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (1, 2)]
    assert ordered.step.tolist() == [0, 0, 0, 0, 1, 1]


def test_sample_trace_ships_with_the_package_and_validates():
    trace = read_trace(sample_trace_path())
    assert trace.num_accesses > 1000
    assert set(trace.frame.phase) == {"prefill", "decode"}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c.update(expert=[9, 1]), "expert=9 is out of range"),
        (lambda c: c.update(rank=[0, 3]), "rank=3 is out of range"),
        (lambda c: c.update(layer=[0, 5]), "layer=5 is out of range"),
        (lambda c: c.update(phase=["decode", "warmup"]), "phase='warmup'"),
        (lambda c: c.update(position=[0, -1]), "position=-1"),
        (lambda c: c.update(weight=[1.0, float("nan")]), "weight"),
        (lambda c: c.update(layer=[0, 0]), "appears twice"),
    ],
)
def test_out_of_range_rows_are_refused_with_the_row_named(tmp_path, mutate, message):
    columns = decode_rows([[[0], [1]]])
    mutate(columns)
    table = pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in TRACE_SCHEMA}, schema=tiny_meta().schema())
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(TraceError, match=message):
        read_trace(tmp_path / "bad.parquet")


def test_missing_file_wrong_file_and_wrong_schema_are_trace_errors(tmp_path):
    with pytest.raises(TraceError, match="no such trace file"):
        read_trace(tmp_path / "absent.parquet")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(TraceError, match="not a readable Parquet file"):
        read_trace(tmp_path / "notes.txt")
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "plain.parquet")
    with pytest.raises(TraceError, match="no 'expertcache' metadata"):
        read_trace(tmp_path / "plain.parquet")
    wrong = pa.table({"request": pa.array([0], pa.int64())}).replace_schema_metadata({b"expertcache": tiny_meta().to_json()})
    pq.write_table(wrong, tmp_path / "wrong.parquet")
    with pytest.raises(TraceError, match="column 'request' is int64, expected int32"):
        read_trace(tmp_path / "wrong.parquet")


def test_an_empty_trace_is_refused(tmp_path):
    empty = pa.table({f.name: pa.array([], type=f.type) for f in TRACE_SCHEMA}, schema=tiny_meta().schema())
    pq.write_table(empty, tmp_path / "empty.parquet")
    with pytest.raises(TraceError, match="no rows"):
        read_trace(tmp_path / "empty.parquet")


def test_metadata_with_impossible_shape_is_refused():
    with pytest.raises(TraceError, match="top_k=9"):
        tiny_meta(num_experts=4, top_k=9)
