"""One expert computed partly on the GPU and partly on the CPU, each from its own slice of the weights.

A layer with a single miss leaves a path idle whichever way the miss goes: the link while the
CPU computes it, the CPU while it is copied. Splitting the expert keeps both busy. The cut runs
along the expert's two contractions, so that every output element is still one dot product on
one device (no partial sums to add, so no extra rounding):

1. intermediate units ``[0, units)`` on the GPU, ``[units, I)`` on the CPU: the gate and up rows
   of each unit;
2. the halves of the activation are exchanged (a few KB each way);
3. output rows ``[0, rows)`` of ``down_proj`` on the GPU, ``[rows, H)`` on the CPU.

Every slice the GPU needs is a contiguous range of the expert's flat row, so it is copied as
is, into the slot the expert is going to (the rest follows when the cache keeps it) or into a
staging slot. Layouts stored transposed (``is_transposed``) would need strided copies and are
not split, nor (for now) experts with biases or interleaved gate/up rows: in transformers 5 only
gpt-oss has those, and it is stored transposed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from expertcache.runtime.experts import ExpertLayout

Ranges = list[tuple[int, int]]
"""Element ranges [start, end) of an expert's flat row."""


def splittable(module: nn.Module, layout: ExpertLayout) -> bool:
    """Whether ``module``'s experts can be cut into contiguous GPU and CPU slices."""
    gate = "gate_up_proj" if getattr(module, "has_gate", True) else "up_proj"
    flat = not getattr(module, "is_transposed", False) and getattr(module, "is_concatenated", True)
    return flat and set(layout.names) == {gate, "down_proj"}


@dataclass(frozen=True)
class Cut:
    """Where one expert is cut: the GPU takes units ``[0, units)`` and output rows ``[0, rows)``."""

    units: int
    rows: int
    intermediate: int
    hidden: int

    @classmethod
    def of(cls, layout: ExpertLayout, share: float) -> "Cut":
        """The cut giving the GPU ``share`` of both contractions (at least one unit and row each side)."""
        hidden, intermediate = layout.shapes[layout.names.index("down_proj")]
        units = min(max(round(share * intermediate), 1), intermediate - 1)
        rows = min(max(round(share * hidden), 1), hidden - 1)
        return cls(units, rows, intermediate, hidden)


def gpu_ranges(layout: ExpertLayout, cut: Cut) -> tuple[Ranges, Ranges]:
    """The row ranges the GPU reads: (its units' gate and up rows, its ``down_proj`` rows)."""
    return _unit_ranges(layout, cut, 0, cut.units), _down_ranges(layout, cut, 0, cut.rows)


def remaining_ranges(layout: ExpertLayout, cut: Cut) -> Ranges:
    """Everything of the row the GPU does not read: what a kept expert still needs copied."""
    return _unit_ranges(layout, cut, cut.units, cut.intermediate) + _down_ranges(layout, cut, cut.rows, cut.hidden)


def units_out(module: nn.Module, x: torch.Tensor, weights: dict[str, torch.Tensor], start: int, end: int) -> torch.Tensor:
    """The activations of intermediate units ``[start, end)`` for rows ``x``: [rows, end - start]."""
    if not getattr(module, "has_gate", True):
        return module.act_fn(nn.functional.linear(x, weights["up_proj"][start:end]))
    gate_up = weights["gate_up_proj"]
    width = gate_up.shape[0] // 2  # [gate; up]: the module's _apply_gate halves the last dimension
    parts = [nn.functional.linear(x, gate_up[lo:hi]) for lo, hi in ((start, end), (width + start, width + end))]
    return module._apply_gate(torch.cat(parts, dim=-1))


def rows_out(h: torch.Tensor, weights: dict[str, torch.Tensor], start: int, end: int) -> torch.Tensor:
    """Output columns ``[start, end)`` of ``down_proj`` applied to the full activation ``h``."""
    return nn.functional.linear(h, weights["down_proj"][start:end])


def _unit_ranges(layout: ExpertLayout, cut: Cut, lo: int, hi: int) -> Ranges:
    """Units ``[lo, hi)``: their gate rows and up rows ([gate; up] when gated), each contiguous."""
    if "gate_up_proj" in layout.names:
        offset = layout.offsets[layout.names.index("gate_up_proj")]
        spans = [(lo, hi), (cut.intermediate + lo, cut.intermediate + hi)]
    else:
        offset = layout.offsets[layout.names.index("up_proj")]
        spans = [(lo, hi)]
    return [(offset + start * cut.hidden, offset + end * cut.hidden) for start, end in spans]


def _down_ranges(layout: ExpertLayout, cut: Cut, lo: int, hi: int) -> Ranges:
    """Output rows ``[lo, hi)`` of ``down_proj`` [H, I]: one contiguous range."""
    offset = layout.offsets[layout.names.index("down_proj")]
    return [(offset + lo * cut.intermediate, offset + hi * cut.intermediate)]
