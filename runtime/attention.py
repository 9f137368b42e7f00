"""Attention whose first step at a new sequence length costs what the next ones do.

Decode meets every sequence length exactly once. On the lent H100 (torch 2.11, bf16), PyTorch's
scaled-dot-product attention picks its cuDNN backend, which builds an execution graph for every
new shape: on 4 Mixtral-shape layers a decode step at a length not seen before took 72.5 ms, one
at a length seen before 11.8 ms, and a new prompt length 2.2 s (``benchmarks/attention_lengths_gpu.py``),
so an ordinary generation paid about 60 ms on every token. Without cuDNN, SDPA's next choices
served the same steps in 12.6 ms new and 8.8 ms seen. A model with the expert cache attached
therefore runs its forward passes with the cuDNN backend left out; the other backends (and SDPA's
choice among them) are untouched, and on the CPU nothing changes.
"""

from __future__ import annotations

from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

STEADY_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def keep_attention_steady(model: nn.Module) -> None:
    """Run every forward pass of ``model`` with SDPA restricted to ``STEADY_BACKENDS``, and
    restore the process's choice after each (also when the pass raises). Idempotent."""
    if getattr(model, "_expertcache_steady_attention", False):
        return
    entered = []

    def enter(module: nn.Module, args) -> None:
        context = sdpa_kernel(STEADY_BACKENDS)
        context.__enter__()
        entered.append(context)

    def leave(module: nn.Module, args, output) -> None:
        entered.pop().__exit__(None, None, None)

    model.register_forward_pre_hook(enter)
    model.register_forward_hook(leave, always_call=True)
    model._expertcache_steady_attention = True
