"""Expert traces: which experts every token chose at every MoE layer, stored as Parquet."""

from expertcache.traces.schema import TRACE_SCHEMA, TraceMeta
from expertcache.traces.io import Trace, TraceWriter, read_trace, sample_trace_path

__all__ = ["TRACE_SCHEMA", "TraceMeta", "Trace", "TraceWriter", "read_trace", "sample_trace_path"]
