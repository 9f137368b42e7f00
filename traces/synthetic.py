"""Synthetic decode routing with known shape and tunable locality, for tests and benchmarks.

Real routing exists here only as the recorded Mixtral traces; scale tests need more tokens than
those, so this draws top-k choices per (token, layer) from a skewed per-layer popularity, and
with probability ``stickiness`` keeps each of the previous token's experts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from expertcache.traces.io import Trace
from expertcache.traces.schema import TraceMeta


def synthetic_trace(
    tokens: int,
    num_layers: int = 32,
    num_experts: int = 8,
    top_k: int = 2,
    requests: int = 1,
    stickiness: float = 0.4,
    skew: float = 1.0,
    expert_bytes: int = 352_321_536,
    seed: int = 0,
) -> Trace:
    """A decode-only trace of ``tokens`` positions per request, as a :class:`Trace` in memory."""
    meta = TraceMeta(  # checks the shape before anything is drawn
        model=f"synthetic(stickiness={stickiness}, skew={skew}, seed={seed})",
        num_layers=num_layers,
        moe_layers=list(range(num_layers)),
        num_experts=num_experts,
        top_k=top_k,
        expert_bytes=expert_bytes,
    )
    rng = np.random.default_rng(seed)
    popularity = rng.dirichlet(np.full(num_experts, 1.0 / max(skew, 1e-3)), size=num_layers)
    choices = np.empty((requests, tokens, num_layers, top_k), dtype=np.int16)
    for layer in range(num_layers):
        draws = rng.choice(num_experts, size=(requests, tokens, 4 * top_k), p=popularity[layer])
        keep = rng.random((requests, tokens, top_k)) < stickiness
        for r in range(requests):
            previous: list[int] = []
            for t in range(tokens):
                chosen = [e for e, k in zip(previous, keep[r, t]) if k]
                for candidate in draws[r, t]:
                    if len(chosen) == top_k:
                        break
                    if candidate not in chosen:
                        chosen.append(int(candidate))
                for candidate in range(num_experts):
                    if len(chosen) == top_k:
                        break
                    if candidate not in chosen:
                        chosen.append(candidate)
                choices[r, t, layer] = chosen
                previous = chosen
    weights = rng.dirichlet(np.ones(top_k), size=(requests, tokens, num_layers)).astype(np.float32)
    weights = -np.sort(-weights, axis=-1)
    req, pos, lay, rank = np.meshgrid(
        np.arange(requests), np.arange(tokens), np.arange(num_layers), np.arange(top_k), indexing="ij"
    )
    frame = pd.DataFrame(
        {
            "request": req.ravel().astype(np.int32),
            "position": pos.ravel().astype(np.int32),
            "phase": "decode",
            "layer": lay.ravel().astype(np.int16),
            "rank": rank.ravel().astype(np.int8),
            "expert": choices.ravel(),
            "weight": weights.ravel(),
        }
    )
    return Trace(meta=meta, frame=frame)
