"""What attaching the cache sets up: CPU threads as priced, and attention without SDPA's cuDNN
backend during each pass, the process's own choice given back after it."""

from __future__ import annotations

import weakref

import pytest
import torch

from expertcache.runtime.loader import attach, load
from expertcache.simulator.config import CacheConfig


def _cudnn_flags_inside_attention(model, ids) -> list[bool]:
    """The cuDNN SDPA flag as each attention module sees it during one forward pass."""
    seen = []
    for module in model.modules():
        if module.__class__.__name__.endswith("Attention"):
            module.register_forward_pre_hook(lambda m, a, kw: seen.append(torch.backends.cuda.cudnn_sdp_enabled()), with_kwargs=True)
    with torch.inference_mode():
        model(ids)
    return seen


def test_attention_runs_without_cudnn_and_restores_the_flag(model_dirs):
    model = load(model_dirs("mixtral"), config=CacheConfig(sets=2, ways=2, policy="lru"), device="cpu")
    ids = torch.tensor([[1, 2, 3]])
    assert torch.backends.cuda.cudnn_sdp_enabled()
    seen = _cudnn_flags_inside_attention(model, ids)
    assert seen and not any(seen)
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored after the pass


def test_the_flag_is_restored_when_a_pass_raises(model_dirs):
    model = load(model_dirs("mixtral"), config=CacheConfig(sets=2, ways=2, policy="lru"), device="cpu")
    with pytest.raises(IndexError), torch.inference_mode():
        model(torch.tensor([[10**6]]))  # a token id outside the vocabulary
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_attaching_twice_installs_the_hooks_once(model_dirs):
    model = load(model_dirs("mixtral"), config=CacheConfig(sets=2, ways=2, policy="lru"), device="cpu")
    hooks = len(model._forward_pre_hooks), len(model._forward_hooks)
    attach(model, model.expertcache.host, model.expertcache.config, torch.device("cpu"), 1, None, 2)
    assert (len(model._forward_pre_hooks), len(model._forward_hooks)) == hooks


def test_attach_computes_with_the_threads_it_prices(model_dirs):
    saved = torch.get_num_threads()
    try:
        model = load(model_dirs("mixtral"), config=CacheConfig(sets=2, ways=2, policy="lru"), device="cpu", threads=2)
        assert torch.get_num_threads() == 2
        attach(model, model.expertcache.host, model.expertcache.config, torch.device("cpu"), 1, None, 2)
        assert torch.get_num_threads() == model.expertcache.threads == 1
    finally:
        torch.set_num_threads(saved)


def test_deleting_the_cache_frees_it_and_a_later_pass_says_so(model_dirs):
    model = load(model_dirs("mixtral"), config=CacheConfig(sets=2, ways=2, policy="lru"), device="cpu")
    runtime = weakref.ref(model.expertcache)
    del model.expertcache
    assert runtime() is None  # at once: nothing keeps it (nor its slot pool) alive, bench attaches the next system right after
    with pytest.raises(RuntimeError, match="expert cache was deleted"), torch.inference_mode():
        model(torch.tensor([[1, 2, 3]]))
