"""Peer (a) of the bench is built from the bench's weights: it must be the same model."""

from __future__ import annotations

import gc
import weakref

import torch
from transformers import AutoModelForCausalLM

from expertcache.runtime.accelerate_offload import offloaded_model
from expertcache.runtime.loader import load
from expertcache.simulator.config import CacheConfig


def test_the_offloaded_model_generates_what_plain_transformers_does(model_dirs):
    model_dir = model_dirs("mixtral")
    bench_model = load(model_dir, config=CacheConfig(sets=1, ways=2, policy="lru"), device=torch.device("cpu"))
    host = bench_model.expertcache.host
    row_memory = [weakref.ref(rows.untyped_storage()) for rows in host.values()]
    del bench_model.expertcache  # the runtime still hangs off the experts modules, as in bench

    offloaded = offloaded_model(bench_model, host, 2**30, torch.device("cpu"))
    assert host == {}  # taken over: the rows' memory went to the parameters
    gc.collect()
    assert all(memory() is None for memory in row_memory)  # and nothing kept the rows: host memory holds the experts once
    assert offloaded.config._experts_implementation != "expertcache"
    assert offloaded.hf_device_map == {"": "cpu"}  # placed by transformers' own device-map code
    assert all(p.device.type == "cpu" and not p.is_meta for p in offloaded.parameters())

    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompt = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.inference_mode():
        expected = plain.generate(prompt, max_new_tokens=8, do_sample=False)
        got = offloaded.generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(got, expected)
