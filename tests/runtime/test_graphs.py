"""Which key-value caches CUDA graphs may serve (``runtime.graphs``), and the one cache generate
reuses for them (``runtime.kv``). Replay itself needs a GPU: with ``EXPERTCACHE_TEST_DEVICE=cuda``
the reuse test here and ``test_equality`` check its captures and its tokens."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, StaticCache

from expertcache.runtime.calibrate import calibrate
from expertcache.runtime.graphs import DecodeGraphs
from expertcache.runtime.kv import CACHE_ARGUMENT, CACHE_STEP, empty_cache
from expertcache.runtime.loader import load
from expertcache.simulator.config import CacheConfig
from test_equality import DEVICE


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


def test_every_request_decodes_into_one_reused_cache(model_dirs):
    """generate empties and reuses the model's one static cache, so the graphs captured for it
    in the first request serve the next ones, and the tokens stay plain transformers' for every
    request (on a GPU too: ``EXPERTCACHE_TEST_DEVICE=cuda``)."""
    model_dir = model_dirs("mixtral")
    plain = AutoModelForCausalLM.from_pretrained(model_dir).to(DEVICE)
    model = load(model_dir, config=CacheConfig(sets=2, ways=2, policy="lru"), device=DEVICE,
                 gpu_budget=2**30 if DEVICE == "cuda" else None)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    caches = []
    for length in (5, 9, 5):
        ids = torch.randint(0, plain.config.vocab_size, (1, length), generator=generator).to(DEVICE)
        model.expertcache.begin_request(length)
        out = model.generate(ids, max_new_tokens=6, do_sample=False)
        assert torch.equal(out, plain.generate(ids, max_new_tokens=6, do_sample=False))
        caches.append(model._expertcache_kv[False][0])  # made outside inference mode, as generate runs
    assert caches[0] is caches[1] is caches[2]
    if DEVICE == "cuda":  # each layer captured in the first request only
        assert model.expertcache.graphs.captures == model.config.num_hidden_layers
    assert empty_cache(model, CACHE_STEP + 1) is not caches[0]  # a longer request gets a larger one, once
    assert empty_cache(model, CACHE_STEP) is model._expertcache_kv[False][0]


def test_the_reused_cache_reaches_every_decoder_layer_by_the_keyword_graphs_look_for(model_dirs):
    """The graphs key a decode step on the cache its decoder layer is handed (``CACHE_ARGUMENT``).
    transformers after 5.17 renamed the keyword to ``cache`` and hands the layers only that: keyed
    on the old name, a GPU would never capture a graph. Nor may generate warn of a deprecated name."""
    import warnings

    model = load(model_dirs("mixtral"), config=CacheConfig(sets=2, ways=2, policy="lru"), device="cpu")
    handed = []
    for layer in model.model.layers:
        layer.register_forward_pre_hook(lambda module, args, kwargs: handed.append(kwargs.get(CACHE_ARGUMENT)), with_kwargs=True)
    model.expertcache.begin_request(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.generate(torch.tensor([[5, 17, 42, 7]]), max_new_tokens=3, do_sample=False)
    reused = model._expertcache_kv[False][0]
    assert len(handed) == 3 * model.config.num_hidden_layers and all(cache is reused for cache in handed)
    assert not [w for w in caught if "past_key_values" in str(w.message) or "`cache`" in str(w.message)]


def test_a_cache_made_in_inference_mode_is_not_written_outside_it(model_dirs):
    """Calibration decodes under inference mode; a plain generate after it must not reuse its cache."""
    model_dir = model_dirs("mixtral")
    model = load(model_dir, config=CacheConfig(sets=1, ways=2, policy="lru"), device="cpu", profile="h100")
    calibrate(model, threads=[1], repeats=1)
    ids = torch.tensor([[5, 17, 42, 7]])
    model.expertcache.begin_request(0)
    out = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(out, AutoModelForCausalLM.from_pretrained(model_dir).generate(ids, max_new_tokens=6, do_sample=False))
    assert set(model._expertcache_kv) == {True, False}
