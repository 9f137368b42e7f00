"""One expert computed partly on the CPU and partly on the GPU, each from its own slice of the weights.

A layer with a single miss leaves a path idle whichever way the miss goes: the link while the
CPU computes it, the CPU while it is copied. Splitting the expert keeps both busy. The cut runs
across the intermediate units of the first contraction: the CPU computes the activations of
units ``[units, I)`` from its host copy while the GPU's slices are copied, the GPU those of
units ``[0, units)``; the CPU's activations (a few KB) follow to the GPU, which then applies the
whole ``down_proj``. Every activation and every output element is still one dot product on one
device (no partial sums to add, so no extra rounding), the CPU never waits for the GPU, and it
only runs the first contraction, its fastest per byte (a one-token ``down_proj`` reads long
rows: 1.5x slower per byte on the lent H100 host's CPU, BENCHMARKS.md).

So a split gives the GPU at least the down projection's share of the expert's bytes
(``least_gpu_share``: a third for gated experts). Every slice the GPU needs is a contiguous range
of the expert's flat row, copied as is into the slot the expert goes to (the rest follows when
the cache keeps it) or into a staging slot. Layouts stored transposed (``is_transposed``) would
need strided copies and are not split, nor experts with biases or interleaved gate/up rows: in
transformers 5 only gpt-oss has those, and it is stored transposed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from expertcache.runtime.experts import ExpertLayout

Ranges = list[tuple[int, int]]
"""Element ranges [start, end) of an expert's flat row."""

CUT_STEPS = 64
"""Cuts fall on multiples of 1/64 of the intermediate units (about 1 % of a gated expert's bytes).
Each cut gives both devices matrix products of a new shape, and a shape's first product costs
extra: on the lent H100 host a one-row Mixtral product took 2.18 against 0.75 ms on the CPU and
0.41 against 0.05 ms on the GPU (``benchmarks/first_shape_gpu.py``). With a cut at any unit decode
kept meeting new shapes; on 64 steps a process meets each at most once, about 0.3 s in all (too
little to explain the first split-heavy fidelity run's shortfall, which is still open)."""


def least_gpu_share(module: nn.Module, layout: ExpertLayout) -> float:
    """The smallest share of an expert's bytes a split leaves to the GPU (its ``down_proj``);
    0 when ``module``'s experts cannot be cut into contiguous slices."""
    first = "gate_up_proj" if getattr(module, "has_gate", True) else "up_proj"
    flat = not getattr(module, "is_transposed", False) and getattr(module, "is_concatenated", True)
    if not flat or set(layout.names) != {first, "down_proj"}:
        return 0.0
    hidden, intermediate = layout.shapes[layout.names.index("down_proj")]
    return hidden * intermediate / layout.numel


@dataclass(frozen=True)
class Cut:
    """Where one expert is cut: the GPU computes units ``[0, units)`` and the whole ``down_proj``."""

    units: int
    intermediate: int
    hidden: int

    @classmethod
    def of(cls, layout: ExpertLayout, gpu_share: float) -> "Cut":
        """The cut on a ``CUT_STEPS`` step nearest to leaving the GPU ``gpu_share`` of the expert's
        bytes (the CPU at least one unit)."""
        hidden, intermediate = layout.shapes[layout.names.index("down_proj")]
        down = hidden * intermediate
        step = max(1, intermediate // CUT_STEPS)
        units = step * round((gpu_share * layout.numel - down) / (layout.numel - down) * intermediate / step)
        return cls(min(max(units, 0), intermediate - 1), intermediate, hidden)

    def unit_ranges(self, layout: ExpertLayout, on_gpu: bool) -> Ranges:
        """The gate and up rows of the GPU's units, or of the CPU's (what a kept expert still needs copied)."""
        return self._unit_ranges(layout, 0, self.units) if on_gpu else self._unit_ranges(layout, self.units, self.intermediate)

    def gpu_fraction(self, layout: ExpertLayout) -> float:
        """The share of the expert's bytes the GPU computes from at this cut: its units' rows and the output projection."""
        return sum(end - start for start, end in self.unit_ranges(layout, on_gpu=True) + self.down_ranges(layout)) / layout.numel

    def down_ranges(self, layout: ExpertLayout) -> Ranges:
        offset = layout.offsets[layout.names.index("down_proj")]
        return [(offset, offset + self.hidden * self.intermediate)]

    def _unit_ranges(self, layout: ExpertLayout, lo: int, hi: int) -> Ranges:
        """Units ``[lo, hi)``: their gate rows and their up rows, each contiguous ([gate; up] when gated)."""
        if "gate_up_proj" in layout.names:
            offset = layout.offsets[layout.names.index("gate_up_proj")]
            spans = [(lo, hi), (self.intermediate + lo, self.intermediate + hi)]
        else:
            offset = layout.offsets[layout.names.index("up_proj")]
            spans = [(lo, hi)]
        return [(offset + start * self.hidden, offset + end * self.hidden) for start, end in spans if end > start]


def units_out(module: nn.Module, x: torch.Tensor, weights: dict[str, torch.Tensor], start: int, end: int) -> torch.Tensor:
    """The activations of intermediate units ``[start, end)`` for rows ``x``: [rows, end - start]."""
    if not getattr(module, "has_gate", True):
        return module.act_fn(nn.functional.linear(x, weights["up_proj"][start:end]))
    gate_up = weights["gate_up_proj"]
    width = gate_up.shape[0] // 2  # [gate; up]: the module's _apply_gate halves the last dimension
    parts = [nn.functional.linear(x, gate_up[lo:hi]) for lo, hi in ((start, end), (width + start, width + end))]
    return module._apply_gate(torch.cat(parts, dim=-1))
