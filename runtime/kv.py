"""One static key-value cache per model, emptied and reused by every ``generate`` call.

``generate`` makes a new cache for each call, and the CUDA graphs of a decode step
(``runtime.graphs``) hold the addresses of the cache they were captured with: every request
captured again in its first decode step, 4–10 ms a layer on the lent H100, inside the timed
decode. An attached model keeps one static cache instead (one per inference mode), sized in
steps of ``CACHE_STEP`` tokens (a longer request gets a larger one, once), so its graphs are
captured once: in the first request, or in whatever untimed warm-up comes first (a bench's,
calibration's). A caller that passes its own cache, decodes a batch, or gives no
``max_new_tokens`` (so the length is not known up front) gets ``generate`` untouched.
"""

from __future__ import annotations

import functools
import inspect
import math

import torch
from torch import nn
from transformers import GenerationMixin, StaticCache

CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters else "past_key_values"
"""The keyword by which ``generate``, a model's forward and its decoder layers take the key-value
cache: ``past_key_values`` up to transformers 5.17 (the lent GPU machines'), ``cache`` in later
releases (5.24 here), which still accept the old name with a FutureWarning, but pass only the new
one down to the decoder layers, where ``runtime.graphs`` looks for it."""

CACHE_STEP = 1024
"""Tokens a reused cache grows by. Attention reads the whole static cache at every step, masked:
on the GPU a few MB a layer for 1,024 tokens, far below a decode layer's time."""


def empty_cache(model: nn.Module, tokens: int) -> StaticCache:
    """The model's reused cache, emptied, holding at least ``tokens``; a larger one if it holds fewer.

    One per inference mode: tensors made under ``torch.inference_mode`` (calibration, the bench)
    may not be written outside it (a plain ``generate``)."""
    caches = model.__dict__.setdefault("_expertcache_kv", {})
    mode = torch.is_inference_mode_enabled()
    cache, holds = caches.get(mode, (None, 0))
    if cache is None or holds < tokens:
        holds = CACHE_STEP * math.ceil(tokens / CACHE_STEP)
        cache = StaticCache(config=model.config, max_cache_len=holds)
        caches[mode] = cache, holds
    cache.reset()
    return cache


def reuse_one_cache(model: nn.Module) -> None:
    """Make ``model.generate`` decode one request at a time into ``empty_cache``; idempotent."""
    if getattr(model, "_expertcache_reuses_cache", False):
        return
    plain = model.generate

    @functools.wraps(plain)
    def generate(*args, **kwargs):
        ids = args[0] if args else kwargs.get("input_ids")
        new_tokens = kwargs.get("max_new_tokens")
        own_cache = kwargs.get("past_key_values") is not None or kwargs.get("cache") is not None
        if own_cache or ids is None or ids.shape[0] != 1 or not isinstance(new_tokens, int):
            return plain(*args, **kwargs)
        kwargs[CACHE_ARGUMENT] = empty_cache(model, ids.shape[1] + new_tokens)
        return plain(*args, **kwargs)

    model.generate = generate
    model._expertcache_reuses_cache = True
