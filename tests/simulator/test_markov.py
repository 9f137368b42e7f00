"""The markov policy's model learns what one layer's routing says about the next layers'."""

from __future__ import annotations

import numpy as np

from expertcache.simulator.markov import (
    add_expert, later_visit_reuse, new_markov_arrays, next_visit_reuse, refresh_evidence, start_visit,
)  # fmt: skip

EXPERTS = 4


def test_the_same_tokens_earlier_layer_predicts_the_next_layer():
    # layer 0 picks a random expert a, layer 1 always picks a + 1: layer 1's own previous
    # token says nothing about its next one, layer 0 of the same token says everything
    likelihood, counts, recent, evidence = new_markov_arrays(2, EXPERTS, num_keys=2 * EXPERTS)
    no_cached_keys = np.full(0, -1, dtype=np.int64)
    ordinal = np.array([0, 1], dtype=np.int64)
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = int(rng.integers(EXPERTS))
        for layer, expert in ((0, a), (1, (a + 1) % EXPERTS)):
            start_visit(likelihood, counts, recent, evidence, layer, no_cached_keys, ordinal, EXPERTS)
            add_expert(likelihood, counts, recent, evidence, layer, expert, no_cached_keys, ordinal, EXPERTS)
    start_visit(likelihood, counts, recent, evidence, 0, no_cached_keys, ordinal, EXPERTS)
    add_expert(likelihood, counts, recent, evidence, 0, 2, no_cached_keys, ordinal, EXPERTS)

    def next_visit(expert: int) -> float:  # layer 1 is the next layer: one visit away
        key = EXPERTS + expert
        refresh_evidence(likelihood, counts, recent, evidence, key, 1, ordinal, EXPERTS)
        return next_visit_reuse(counts, evidence, key, 1, expert, EXPERTS)

    assert next_visit(3) > 0.95
    assert all(next_visit(e) < 0.05 for e in (0, 1, 2))
    # from layer 1's own previous visit, every expert stays near its frequency, one in four
    later = [later_visit_reuse(likelihood, counts, recent, 1, e, 1, EXPERTS) for e in range(EXPERTS)]
    assert all(0.1 < p < 0.45 for p in later)
