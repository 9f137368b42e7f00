"""Trace-forced routing: replay a recorded trace's expert choices instead of the router's.

Synthetic full-size models have random routers; forcing their layers to follow a real trace
keeps real expert choices and real timing together: the runtime still waits for each layer's
router, as a real run does, then follows the trace instead (``CachedExperts._routing_of``). A
model with fewer layers than the trace (a shortened smoke run) follows the trace's layers of the
same indices. Every forward pass consumes as many trace tokens as it has positions (decode: one),
in the trace's execution order, cycling at the end.
"""

from __future__ import annotations

import numpy as np

from expertcache.errors import ConfigError
from expertcache.traces.io import Trace


class TraceRouting:
    def __init__(self, trace: Trace, moe_layers: list[int], num_experts: int, top_k: int) -> None:
        meta = trace.meta
        if not set(moe_layers) <= set(meta.moe_layers) or meta.num_experts != num_experts or meta.top_k != top_k:
            raise ConfigError(
                f"the trace's shape (MoE layers {meta.moe_layers}, {meta.num_experts} experts, top-{meta.top_k}) "
                f"does not cover the model's ({moe_layers}, {num_experts}, top-{top_k})"
            )
        frame = trace.in_execution_order()
        frame = frame[frame.layer.isin(moe_layers)].sort_values(["step", "position", "layer", "rank"], kind="stable")
        tokens = len(frame) // (len(moe_layers) * top_k)
        shape = (tokens, len(moe_layers), top_k)
        self.experts = frame.expert.to_numpy(np.int64).reshape(shape)
        self.weights = frame.weight.to_numpy(np.float32).reshape(shape)
        self.ordinal = {layer: i for i, layer in enumerate(moe_layers)}
        self.tokens = tokens
        self._step = -1
        self._cursor = 0
        self._width = 0

    def __call__(self, layer: int, step: int, tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """Experts and weights [tokens, top_k] for ``layer`` in forward pass ``step``."""
        if step != self._step:
            self._cursor += self._width
            self._step, self._width = step, tokens
        rows = (self._cursor + np.arange(tokens)) % self.tokens
        ordinal = self.ordinal[layer]
        return self.experts[rows, ordinal], self.weights[rows, ordinal]
