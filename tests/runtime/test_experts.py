"""The flat per-expert layout read from transformers' experts modules (``runtime.experts``)."""

from __future__ import annotations

import pytest
import torch

from expertcache.runtime.experts import ExpertLayout, expert_ffn
from test_split import HIDDEN, experts_module, row_of


@pytest.mark.parametrize("kind", ["gated", "ungated", "transposed"])
def test_the_layout_gives_the_width_of_the_rows_experts_take_and_give(kind):
    """The slot graphs' input row is this wide, whichever way the module stores its projections."""
    module = experts_module(kind)
    layout = ExpertLayout.of(module)
    assert layout.hidden_size(module) == HIDDEN
    out = expert_ffn(module, torch.randn(3, layout.hidden_size(module)), layout.views(row_of(module, layout, 0)))
    assert out.shape == (3, HIDDEN)
