"""Which key-value caches CUDA graphs may serve (``runtime.graphs``); replay itself needs a GPU,
where ``test_equality`` checks its tokens with ``EXPERTCACHE_TEST_DEVICE=cuda``."""

from __future__ import annotations

import torch
from transformers import AutoConfig, DynamicCache, StaticCache

from expertcache.runtime.graphs import DecodeGraphs


def test_only_plain_static_caches_holding_a_prompt_are_served(model_dirs):
    """A sliding-window layer keeps its length in a Python int, which a replay would not advance;
    a cache not yet holding anything allocates its tensors in its first pass."""
    graphs = DecodeGraphs()
    static = StaticCache(config=AutoConfig.from_pretrained(model_dirs("mixtral")), max_cache_len=8)
    sliding = StaticCache(config=AutoConfig.from_pretrained(model_dirs("gpt_oss")), max_cache_len=8)
    assert graphs._tensors_of(static) is None  # empty
    for cache in (static, sliding):
        for layer in range(len(cache.layers)):
            cache.update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), layer)
    assert graphs._tensors_of(static) is not None
    assert graphs._tensors_of(sliding) is None
    assert graphs._tensors_of(DynamicCache()) is None
