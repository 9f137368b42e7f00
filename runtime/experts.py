"""Finding the routed-expert modules of any transformers MoE model, and one expert's FFN.

transformers 5 gives every MoE family's experts module the same face through
``@use_experts_implementation``: fused 3-D parameters (``gate_up_proj`` [E, 2I, H] or
``up_proj``, ``down_proj`` [E, H, I], optional ``*_bias`` [E, ·]) and flags on the module
(``has_gate``, ``has_bias``, ``is_transposed``, ``has_post_expert_norm``, plus an
``_apply_gate`` that knows concatenated from interleaved gate/up). We read only that face.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

_LAYER_IN_NAME = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass(frozen=True)
class ExpertLayout:
    """Where each per-expert parameter lives inside one flat row of ``numel`` elements."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]  # per expert, without the leading E
    offsets: tuple[int, ...]
    numel: int
    dtype: torch.dtype

    @classmethod
    def of(cls, module: nn.Module) -> "ExpertLayout":
        """The layout of a module's experts; remembered on the module once its parameters move."""
        known = getattr(module, "_expertcache_layout", None)
        if known is not None:
            return known
        num_experts = module.num_experts
        names, shapes, offsets, total = [], [], [], 0
        for name, param in module.named_parameters(recurse=False):
            if param.dim() >= 2 and param.shape[0] == num_experts:
                names.append(name)
                shapes.append(tuple(param.shape[1:]))
                offsets.append(total)
                total += param[0].numel()
        if not names:
            raise ValueError(f"{type(module).__name__} has no per-expert parameters")
        dtypes = {getattr(module, n).dtype for n in names}
        if len(dtypes) != 1:
            raise ValueError(f"{type(module).__name__}: expert parameters of mixed dtypes {dtypes}")
        layout = cls(tuple(names), tuple(shapes), tuple(offsets), total, dtypes.pop())
        module._expertcache_layout = layout
        return layout

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def release(self, module: nn.Module) -> None:
        """Empty ``module``'s expert parameters once their rows live elsewhere, so moving the
        model to the GPU moves only the dense part."""
        for name in self.names:
            module._parameters[name] = nn.Parameter(torch.empty(0, dtype=self.dtype), requires_grad=False)

    def hidden_size(self, module: nn.Module) -> int:
        """The width of the rows ``module``'s experts take and give: ``down_proj``'s output."""
        down = self.shapes[self.names.index("down_proj")]
        return down[1] if getattr(module, "is_transposed", False) else down[0]

    def views(self, row: torch.Tensor) -> dict[str, torch.Tensor]:
        """Parameter views of one expert stored in a flat ``row``."""
        return {
            name: row[offset : offset + _prod(shape)].view(shape)
            for name, shape, offset in zip(self.names, self.shapes, self.offsets)
        }


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for size in shape:
        out *= size
    return out


def find_experts_modules(model: nn.Module) -> list[tuple[int, str, nn.Module]]:
    """Every routed-experts module as (decoder layer index, qualified name, module), by layer."""
    found = []
    for name, module in model.named_modules():
        if hasattr(module, "has_gate") and hasattr(module, "num_experts") and hasattr(module, "down_proj"):
            match = _LAYER_IN_NAME.search(name)
            if match is None:
                raise ValueError(f"cannot tell the decoder layer of experts module '{name}'")
            found.append((int(match.group(1)), name, module))
    return sorted(found, key=lambda item: item[0])


def decoder_layers_name(experts_name: str) -> str:
    """The qualified name of the list that holds the decoder layer of the experts module named
    ``experts_name`` (as ``find_experts_modules`` names it): "model.layers" for
    "model.layers.3.mlp.experts"."""
    return experts_name[: _LAYER_IN_NAME.search(experts_name).start(1) - 1]


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool) -> torch.Tensor:
    out = x @ weight if transposed else nn.functional.linear(x, weight)
    return out + bias if bias is not None else out


def expert_ffn(module: nn.Module, x: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """One expert applied to the rows ``x``, with the module's own gating and activation.

    The optional post-expert norm is left to the caller: its weights live on the GPU while
    this may run on the CPU.
    """
    transposed = getattr(module, "is_transposed", False)
    if getattr(module, "has_gate", True):
        hidden = _linear(x, weights["gate_up_proj"], weights.get("gate_up_proj_bias"), transposed)
        hidden = module._apply_gate(hidden)
    else:
        hidden = module.act_fn(_linear(x, weights["up_proj"], weights.get("up_proj_bias"), transposed))
    return _linear(hidden, weights["down_proj"], weights.get("down_proj_bias"), transposed)
