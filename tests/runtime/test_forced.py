"""Trace-forced routing: a model follows a recorded trace's choices instead of its router's."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from expertcache.errors import ConfigError
from expertcache.runtime.forced import TraceRouting
from expertcache.runtime.generate import generate_prompts
from expertcache.runtime.loader import load
from expertcache.runtime.record import Recorder
from expertcache.runtime.synthetic import build_tiny_model
from expertcache.simulator.config import CacheConfig
from expertcache.traces.io import read_trace

PROMPTS = ["The cache keeps the experts", "def add(a, b):"]


def record(model_dir, path, routing_from=None):
    model = load(model_dir, config=CacheConfig(sets=2, ways=2, policy="lru"), device="cpu")
    runtime = model.expertcache
    if routing_from is not None:
        runtime.routing = TraceRouting(read_trace(routing_from), runtime.moe_layers, runtime.num_experts, runtime.top_k)
    runtime.recorder = Recorder(path, runtime, "tiny")
    generate_prompts(model, AutoTokenizer.from_pretrained(model_dir), PROMPTS, max_new_tokens=6, stream=False)
    runtime.recorder.close()
    return read_trace(path).in_execution_order()


def test_a_different_model_replays_the_recorded_choices(model_dirs, tmp_path):
    original = record(model_dirs("mixtral"), tmp_path / "a.parquet")
    other_weights = build_tiny_model("mixtral", tmp_path / "other", seed=1)
    natural = record(other_weights, tmp_path / "b.parquet")
    forced = record(other_weights, tmp_path / "c.parquet", routing_from=tmp_path / "a.parquet")
    assert not np.array_equal(natural.expert, original.expert)
    assert np.array_equal(forced.expert, original.expert)
    assert np.allclose(forced.weight, original.weight)


def test_a_trace_of_another_shape_is_refused(model_dirs, tmp_path):
    record(model_dirs("mixtral"), tmp_path / "a.parquet")
    with pytest.raises(ConfigError, match="does not cover"):
        TraceRouting(read_trace(tmp_path / "a.parquet"), [0, 1, 2], num_experts=16, top_k=2)
