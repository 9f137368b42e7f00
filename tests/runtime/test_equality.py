"""Caching must never change the output: greedy tokens equal plain transformers', token for token."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import FAMILIES
from expertcache.runtime.loader import load
from expertcache.runtime.offload import STAGING_SLOTS
from expertcache.runtime.record import Recorder, sibling
from expertcache.simulator.config import CacheConfig
from expertcache.simulator.costs import TORCH, Profile, load_profile
from expertcache.simulator.policies import get_policy

DEVICE = os.environ.get("EXPERTCACHE_TEST_DEVICE", "cpu")
"""CI has no GPU; on a GPU machine the same tests run with EXPERTCACHE_TEST_DEVICE=cuda."""
NEW_TOKENS = 12
GEOMETRIES = [(2, 1), (3, 2), (1, 5)]  # a 1-way cache, a set-associative one, a fully associative one
_reference: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
SPLIT = Profile(
    name="split", expert_bytes=1_000_000, h2d_gbps=0.1, cpu_expert_ms={1: {1: 12.0}, 2: {1: 12.0}}, gpu_expert_ms={1: 0.1},
    dense_ms={1: 1.0}, layer_overhead_ms=0.0,
)
"""Copy 10 ms + GPU 0.1 against CPU 12 ms: of two misses in a layer, one runs on each side (a
split of the second would wait behind the first's copy); a layer's lone miss is split between
them when the link is free."""


def decode_layers(recording: Path) -> pd.DataFrame:
    """The decode rows of a recording's timing sibling: one per (pass, MoE layer), with its kind."""
    timing = pd.read_parquet(sibling(recording, "timing"))
    return timing[timing.phase == "decode"]


def reference(model_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt ids and plain transformers' greedy continuation (default experts implementation)."""
    if model_dir not in _reference:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        ids = tokenizer("Natalia sold clips to 48 of her friends", return_tensors="pt").input_ids
        plain = AutoModelForCausalLM.from_pretrained(model_dir).to(DEVICE)
        ids = ids.to(DEVICE)
        out = plain.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        _reference[model_dir] = (ids, out)
    return _reference[model_dir]


def cached_generate(
    model_dir: str, config: CacheConfig, record_to: Path | None = None, pace_from: float | None = None, **load_args
) -> tuple[torch.Tensor, object]:
    """The cached model's greedy continuation of the reference prompt, and its runtime; with
    ``record_to``, the run recorded there (its timing sibling says how each layer's misses ran);
    with ``pace_from``, the CPU paced (``runtime.cpu_pace``) from that scale of the profile's price."""
    ids, _ = reference(model_dir)
    load_args.setdefault("profile", SPLIT)
    load_args["pace_cpu"] = pace_from is not None  # unpaced, the profile's CPU price places the misses these tests need
    model = load(model_dir, config=config, device=DEVICE, gpu_budget=2**30 if DEVICE == "cuda" else None, **load_args)
    if pace_from is not None:
        model.expertcache.cpu_pace.scale = pace_from
    if record_to is not None:
        model.expertcache.recorder = Recorder(record_to, model.expertcache, "tiny")
    model.expertcache.begin_request(0)
    out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=model.config.pad_token_id)
    model.expertcache.end_pass()
    if record_to is not None:
        model.expertcache.recorder.close()
    graphs, slot_graphs = model.expertcache.graphs, model.expertcache.slot_graphs
    if DEVICE == "cuda":  # decode replayed CUDA graphs (runtime.graphs), each layer captured once,
        # but for a sliding-window cache (gpt-oss), which decodes eagerly; its one-row GPU experts
        # replayed their slots' graphs (runtime.slot_graphs)
        layers = 0 if getattr(model.config, "sliding_window", None) else model.config.num_hidden_layers
        assert (graphs.captures, graphs.failed) == (layers, False)
        assert slot_graphs.replays > 0
    else:
        assert graphs is None and slot_graphs is None
    return out, model.expertcache


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("policy", ["lru", "fifo", "lfu", "random"])
def test_greedy_tokens_equal_plain_transformers(model_dirs, family, policy):
    model_dir = model_dirs(family)
    expected = reference(model_dir)[1]
    for sets, ways in GEOMETRIES:
        out, runtime = cached_generate(model_dir, CacheConfig(sets=sets, ways=ways, policy=policy, seed=7))
        assert torch.equal(out, expected), f"{family} {policy} {sets}x{ways}"
        assert runtime.stats.misses > 0 and runtime.stats.copies > 0
        assert runtime.stats.fetched > 0 and runtime.stats.layer_cpu_s.sum() > 0  # both paths ran


def test_one_row_cpu_experts_on_torchs_own_kernel_keep_the_output(model_dirs):
    # the kernel a calibrated profile found faster for one row (runtime.cpu_kernel)
    model_dir = model_dirs("phimoe")
    profile = replace(SPLIT, one_row_kernel={1: TORCH, 2: TORCH})
    out, runtime = cached_generate(model_dir, CacheConfig(sets=3, ways=2, policy="eta"), profile=profile)
    assert torch.equal(out, reference(model_dir)[1])
    assert runtime.one_row_kernel == TORCH and runtime.stats.cpu_experts > 0 and runtime.stats.split > 0


@pytest.mark.parametrize("policy", ["eta", "markov", "score"])
def test_bypassing_and_score_policies_keep_the_output(model_dirs, policy):
    model_dir = model_dirs("qwen2_moe")
    out, runtime = cached_generate(model_dir, CacheConfig(sets=2, ways=2, policy=policy))
    assert torch.equal(out, reference(model_dir)[1])
    if get_policy(policy).may_bypass:  # misses not kept, some run on the GPU through staging slots
        assert runtime.stats.bypassed > 0 and runtime.stats.staged > 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cpu_ms", [12.0, 4.0])  # a lone miss: the GPU takes about half of it; its output projection only
def test_misses_split_between_the_gpu_and_the_cpu_keep_the_output(model_dirs, family, cpu_ms):
    model_dir = model_dirs(family)
    profile = replace(SPLIT, cpu_expert_ms={1: {1: cpu_ms}, 2: {1: cpu_ms}})
    splits = 0
    for policy in ("eta", "score"):  # eta's splits go through staging slots; score keeps some, copied whole behind
        out, runtime = cached_generate(model_dir, CacheConfig(sets=3, ways=2, policy=policy), profile=profile)
        assert torch.equal(out, reference(model_dir)[1]), policy
        splits += runtime.stats.split
        if DEVICE == "cuda" and runtime.stats.split:  # decode's splits replayed their slots' split graphs
            assert runtime.slot_graphs.split_replays > 0, policy
    assert (splits > 0) == (family != "gpt_oss")  # gpt-oss stores its experts transposed: never cut


def test_a_profile_without_splits_never_splits_and_captures_no_split_graphs(model_dirs):
    model_dir = model_dirs("mixtral")
    unsplit = replace(SPLIT, split_min_gpu_share=0.0)
    out, runtime = cached_generate(model_dir, CacheConfig(sets=3, ways=2, policy="eta"), profile=unsplit, pace_from=1.0)
    assert torch.equal(out, reference(model_dir)[1])
    assert runtime.stats.split == 0 and runtime.stats.layer_cpu_s.sum() > 0
    assert runtime.cpu_pace is not None and runtime.split_pace is None  # paced, but no split to pace
    if DEVICE == "cuda":  # the slot graphs hold no split halves this runtime would never replay
        assert not runtime.slot_graphs.splits


def test_a_layers_second_miss_split_behind_its_first_keeps_the_output(model_dirs, tmp_path):
    # CPU 4 ms against copy 10: of a decode layer's two misses the first runs on the CPU, the second
    # is split, its GPU share copied while the CPU computes the first, then its own share
    model_dir = model_dirs("mixtral")
    profile = replace(SPLIT, cpu_expert_ms={1: {1: 4.0}, 2: {1: 4.0}})
    out, _ = cached_generate(model_dir, CacheConfig(sets=3, ways=2, policy="eta"), record_to=tmp_path / "r.parquet", profile=profile)
    assert torch.equal(out, reference(model_dir)[1])
    decode = decode_layers(tmp_path / "r.parquet")
    assert ((decode.kind == "split") & (decode.misses == 2)).any()


def test_a_split_through_a_staging_slot_that_a_copied_miss_reads_keeps_the_output(model_dirs):
    # copies of 1 ms against CPU experts of 2.5: a prefill layer copies most of its misses, through
    # the two staging slots in turn where a 2 x 1 cache keeps few, and splits its last one through
    # a staging slot a copied miss reads too: its slices wait until that miss's kernels are queued
    model_dir = model_dirs("mixtral")
    fast_link = replace(SPLIT, h2d_gbps=1.0, cpu_expert_ms={1: {1: 2.5}, 2: {1: 2.5}})
    out, runtime = cached_generate(model_dir, CacheConfig(sets=2, ways=1, policy="lru"), profile=fast_link)
    assert torch.equal(out, reference(model_dir)[1])
    assert runtime.stats.staged > STAGING_SLOTS and runtime.stats.split > 0


def test_a_paced_cpu_places_misses_at_its_measured_speed_and_keeps_the_output(model_dirs, tmp_path):
    # SPLIT prices a CPU expert at 12 ms against a copy of 10: of a decode layer's two misses one is
    # copied whole. Paced from a tenth of that price (where the tiny model's far faster experts keep
    # it), the CPU takes the first and shares the second with the GPU: none is copied whole
    model_dir = model_dirs("mixtral")
    config = CacheConfig(sets=3, ways=2, policy="eta")
    _, fixed = cached_generate(model_dir, config, record_to=tmp_path / "fixed.parquet")
    out, paced = cached_generate(model_dir, config, record_to=tmp_path / "paced.parquet", pace_from=0.1)
    assert torch.equal(out, reference(model_dir)[1])
    assert fixed.cpu_pace is None and paced.cpu_pace.observed > 0 and paced.cpu_pace.scale < 1
    # the splits' CPU shares paced too, against their part of a whole expert at that pace
    assert fixed.split_pace is None and 0 < paced.split_pace.observed <= paced.stats.split
    kinds = {name: set(decode_layers(tmp_path / f"{name}.parquet").kind) for name in ("fixed", "paced")}
    assert "hybrid" in kinds["fixed"] and not {"gpu", "hybrid"} & kinds["paced"], kinds


def test_every_miss_on_the_gpu_path_keeps_the_output(model_dirs):
    model_dir = model_dirs("mixtral")
    fetch_always = load_profile("h100").with_cpu_slower(1000)
    out, runtime = cached_generate(model_dir, CacheConfig(sets=1, ways=2, policy="lru"), profile=fetch_always)
    assert torch.equal(out, reference(model_dir)[1])
    # prefill: more misses per layer than slots, so misses evicted within the layer go through staging
    assert runtime.stats.fetched > 0 and runtime.stats.layer_cpu_s.sum() == 0
    assert runtime.stats.staged > 0


def test_gpu_work_hidden_behind_the_next_layer_sends_misses_to_the_gpu_at_run_time(model_dirs):
    # SPLIT with 50 ms of each layer's GPU work hidden: the GPU path always looks sooner than the
    # CPU's 12 ms, and a whole copy sooner than a split
    model_dir = model_dirs("mixtral")
    hidden = replace(SPLIT, dense_overlap_ms=50.0)
    out, runtime = cached_generate(model_dir, CacheConfig(sets=3, ways=2, policy="eta"), profile=hidden)
    assert torch.equal(out, reference(model_dir)[1])
    assert runtime.stats.fetched > 0 and runtime.stats.split == 0 and runtime.stats.layer_cpu_s.sum() == 0


def test_statistics_count_every_access(model_dirs):
    model_dir = model_dirs("olmoe")
    ids, _ = reference(model_dir)
    _, runtime = cached_generate(model_dir, CacheConfig(sets=3, ways=2, policy="lru"))
    stats = runtime.stats
    tokens = ids.shape[1] + NEW_TOKENS - 1
    assert (stats.prefill_tokens, stats.decode_tokens) == (ids.shape[1], NEW_TOKENS - 1)
    assert stats.hits + stats.misses == tokens * len(runtime.moe_layers) * runtime.top_k
    assert len(stats.layer_hit_rate()) == 3


@pytest.mark.parametrize("placement", ["fetch", "static", "cpu"])
def test_the_compared_placements_keep_the_output(model_dirs, placement):
    from expertcache.runtime.loader import attach, load

    model_dir = model_dirs("mixtral")
    ids, expected = reference(model_dir)
    config = CacheConfig(sets=4, ways=2, policy="lru")
    model = load(model_dir, config=config, device=DEVICE, gpu_budget=2**30 if DEVICE == "cuda" else None)
    runtime = model.expertcache
    attach(model, runtime.host, config, runtime.device, runtime.threads, None, runtime.top_k, placement=placement)
    model.expertcache.begin_request(0)
    out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=model.config.pad_token_id)
    model.expertcache.end_pass()
    stats = model.expertcache.stats
    assert torch.equal(out, expected)
    if placement == "fetch":
        assert stats.fetched == stats.copies + stats.staged and stats.copies > 0 and stats.layer_cpu_s.sum() == 0
        assert stats.cpu_experts == 0
    elif placement == "static":
        # 8 slots hold the 8 experts of the last of 3 layers: its accesses all hit, no copy ever
        assert stats.layer_hits.tolist()[:2] == [0, 0] and stats.layer_misses[2] == 0 and stats.copies == 0
    else:
        assert stats.hits == 0 and stats.copies == 0 and stats.fetched == 0
        # a decode access is one expert computed alone; a prefill expert serves all its tokens at once
        decode_accesses = stats.decode_tokens * len(runtime.moe_layers) * runtime.top_k
        assert decode_accesses < stats.cpu_experts < stats.misses
