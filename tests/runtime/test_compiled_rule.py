"""The runtime decides each layer's misses with the simulator's compiled rule (``schedule.split_misses``).

numba compiles a function once per set of argument types. A layer with no resident expert once
handed the rule an int where a layer with resident experts handed a float, so whichever kind of
layer came second in a process compiled it again, mid-run (0.85 s on the dev box). Every call must
use the types the simulator's replay compiles.
"""

from __future__ import annotations

import torch
from numba import types

from expertcache.runtime.loader import load
from expertcache.simulator.config import CacheConfig
from expertcache.simulator.schedule import split_misses


def test_layers_with_and_without_resident_experts_call_the_rule_with_one_set_of_types(model_dirs):
    model = load(model_dirs("mixtral"), config=CacheConfig(sets=2, ways=2, policy="eta"), device="cpu", profile="h100", threads=2)
    with torch.inference_mode():
        model.generate(torch.tensor([[1, 2, 3, 4]]), max_new_tokens=8, min_new_tokens=8, do_sample=False)
    stats = model.expertcache.stats
    assert stats.layer_hits.sum() > 0 and stats.cpu_experts + stats.fetched + stats.split > 0  # both kinds of layer ran
    # (rows, admitted, count, miss path, then the four clock readings, then the tables and outputs)
    clocks = {signature[4:8] for signature in split_misses.signatures}
    assert clocks == {(types.float64,) * 4}
