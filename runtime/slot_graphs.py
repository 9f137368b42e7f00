"""One-row experts replayed from CUDA graphs, one graph per slot.

A decode step's GPU expert is one row through ``gate_up_proj``, the gate and ``down_proj``: four
or five kernels, each launched from Python. On the lent H100 host a small eager operator held the
host about 30 µs (``benchmarks/launcher_thread_gpu.py``: 40 of them took 1.19 ms), and a decode
layer's host work, not its GPU work, sets its pace when its experts are resident. A slot's expert
applied to one row runs the same kernels on the same addresses at every step: copies change the
slot's contents, never its place. So each slot's expert is captured once, when the runtime is
attached, and replayed in one launch.

The graphs share one input row, into which a layer copies its hidden state once
(``SlotGraphs.hold``); each slot's graph writes its own output. A layer reads that output before
any later layer replays the slot (one stream orders them); within a layer a slot read twice (a
staging slot reused) runs eagerly the second time, so that its first output is not overwritten.

The outputs live outside the graphs' memory pool, which the graphs share: a graph's memory there
is free again once it was captured, and the next capture may take it. Replays in any order on one
stream then only overwrite what an earlier replay no longer needs. An output kept in the pool can
be the scratch memory of a graph captured before it, whose replay then overwrites it (with outputs
kept there, the equality tests on the GPU failed).

A split expert (``runtime.split``) is replayed in two halves, when the model's experts can be split:
the first contraction and the gate into one shared activations row (``replay_units``), and the
output projection of that row (``replay_down``). The first half computes every unit, not only the
GPU's: one graph per slot serves every cut, and the CPU's units then overwrite their part of the row
before the second half reads it (each activation is its own dot product, so what the GPU computed
there from slices not yet copied is discarded whole). It reads a whole first contraction instead of
the GPU's share of it, about 0.1 ms of HBM on a Mixtral expert. On the lent H100 host the two halves
held the host 0.26-0.31 ms replayed against 0.49-0.64 ms eagerly, about ten launches
(``benchmarks/split_host_gpu.py``, BENCHMARKS.md session 19).
"""

from __future__ import annotations

import torch
from torch import nn

from expertcache.runtime.experts import expert_ffn
from expertcache.runtime.split import units_out


class SlotGraphs:
    """A captured one-row expert per slot of a CUDA slot pool.

    Every experts module of a model computes the same function of its weights (one class, one
    config; the slot pool already holds them all in one layout), so one module's code is captured
    for every slot, whichever layer's expert the slot holds."""

    def __init__(
        self, module: nn.Module, slot_views: list[dict[str, torch.Tensor]], hidden_size: int, dtype: torch.dtype, device: torch.device,
        splits: bool = False,
    ) -> None:
        self.input = torch.zeros(1, hidden_size, dtype=dtype, device=device)
        self._outputs = [torch.empty(1, hidden_size, dtype=dtype, device=device) for _ in slot_views]
        self._graphs: list[torch.cuda.CUDAGraph] = []
        # a split's halves (``splits``): the activations row both read, the output projection's result
        intermediate = slot_views[0]["down_proj"].shape[-1] if splits else 0
        self.activations = torch.zeros(1, intermediate, dtype=dtype, device=device) if splits else None
        self.split_output = torch.empty(1, hidden_size, dtype=dtype, device=device) if splits else None
        self._units_graphs: list[torch.cuda.CUDAGraph] = []
        self._down_graphs: list[torch.cuda.CUDAGraph] = []
        self.replays = 0
        self.split_replays = 0  # of them, splits' output projections: one per split replayed
        torch.cuda.synchronize(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            expert_ffn(module, self.input, slot_views[0])  # cuBLAS sets up this stream's workspace outside any capture
            pool = torch.cuda.graph_pool_handle()
            for views, output in zip(slot_views, self._outputs):
                self._graphs.append(_captured(pool, lambda: output.copy_(expert_ffn(module, self.input, views))))
                if splits:
                    units = lambda: self.activations.copy_(units_out(module, self.input, views, 0, intermediate))  # noqa: E731
                    down = lambda: self.split_output.copy_(nn.functional.linear(self.activations, views["down_proj"]))  # noqa: E731
                    self._units_graphs.append(_captured(pool, units))
                    self._down_graphs.append(_captured(pool, down))
        torch.cuda.current_stream(device).wait_stream(side)

    @property
    def splits(self) -> bool:
        """Whether split experts replay their two halves here."""
        return self.activations is not None

    def hold(self, row: torch.Tensor) -> torch.Tensor:
        """``row`` copied into the graphs' input, which the layer's GPU work then reads."""
        return self.input.copy_(row)

    def replay(self, slot: int) -> torch.Tensor:
        """The expert in ``slot`` applied to the input row, queued as one launch; the returned
        buffer is overwritten by the slot's next replay."""
        self._graphs[slot].replay()
        self.replays += 1
        return self._outputs[slot]

    def replay_units(self, slot: int) -> torch.Tensor:
        """Every unit's activation of the expert in ``slot`` for the input row, queued as one
        launch into ``activations``; the caller overwrites the CPU's units before ``replay_down``."""
        self._units_graphs[slot].replay()
        self.replays += 1
        return self.activations

    def replay_down(self, slot: int) -> torch.Tensor:
        """The output projection of the expert in ``slot`` applied to ``activations``, queued as one
        launch; the returned buffer is overwritten by the next split's."""
        self._down_graphs[slot].replay()
        self.replays += 1
        self.split_replays += 1
        return self.split_output


def _captured(pool, work) -> torch.cuda.CUDAGraph:
    """``work`` captured as a graph in ``pool``, on the current (side) stream."""
    graph = torch.cuda.CUDAGraph()
    graph.capture_begin(pool=pool)
    try:
        work()
    finally:
        graph.capture_end()
    return graph
