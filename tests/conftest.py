"""Shared helpers: small traces written through the real writer, and tiny models of each MoE
family built once per session through save_pretrained, all in temporary directories."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from expertcache.runtime.synthetic import build_tiny_model
from expertcache.traces.io import TraceWriter
from expertcache.traces.schema import TraceMeta


FAMILIES = ["mixtral", "phimoe", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss"]


def decode_rows(choices: list[list[list[int]]], request: int = 0, first_position: int = 0) -> dict:
    """Columns for a decode-only request: ``choices[token][layer]`` lists the ranked experts."""
    cols = {k: [] for k in ("request", "position", "phase", "layer", "rank", "expert", "weight")}
    for t, layers in enumerate(choices):
        for layer, experts in enumerate(layers):
            for rank, expert in enumerate(experts):
                cols["request"].append(request)
                cols["position"].append(first_position + t)
                cols["phase"].append("decode")
                cols["layer"].append(layer)
                cols["rank"].append(rank)
                cols["expert"].append(expert)
                cols["weight"].append(1.0 / (rank + 1))
    return cols


def tiny_meta(num_layers: int = 2, num_experts: int = 4, top_k: int = 1, expert_bytes: int = 1_000_000) -> TraceMeta:
    return TraceMeta(
        model="hand-made",
        num_layers=num_layers,
        moe_layers=list(range(num_layers)),
        num_experts=num_experts,
        top_k=top_k,
        expert_bytes=expert_bytes,
    )


def write_trace(path: Path, meta: TraceMeta, *batches: dict) -> Path:
    with TraceWriter(path, meta) as writer:
        for batch in batches:
            writer.append(**batch)
    return path


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed command line for real, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "expertcache.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@pytest.fixture
def small_trace(tmp_path: Path) -> Path:
    """Two layers, four experts, top-1, eight decode tokens."""
    choices = [[[0], [1]], [[0], [2]], [[3], [1]], [[0], [1]], [[2], [2]], [[0], [1]], [[3], [3]], [[0], [1]]]
    return write_trace(tmp_path / "small.parquet", tiny_meta(), decode_rows(choices))


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """family → directory of a tiny model, built on first use."""
    built: dict[str, str] = {}

    def get(family: str) -> str:
        if family not in built:
            built[family] = str(build_tiny_model(family, tmp_path_factory.mktemp(family)))
        return built[family]

    return get
