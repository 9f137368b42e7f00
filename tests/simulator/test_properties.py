"""Properties that must hold for every trace: checked on many random ones (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from expertcache.simulator.cache import access_sequence, new_state
from expertcache.simulator.engine import next_use_of
from expertcache.simulator.geometry import Geometry
from expertcache.simulator.policies import POLICIES

LAYERS, EXPERTS = 3, 4

accesses = st.lists(st.tuples(st.integers(0, LAYERS - 1), st.integers(0, EXPERTS - 1)), min_size=1, max_size=200)


def hits_of(seq: list[tuple[int, int]], geometry: Geometry, policy: str) -> np.ndarray:
    layers = np.array([a[0] for a in seq], np.int64)
    experts = np.array([a[1] for a in seq], np.int64)
    count = len(seq)
    state = new_state(geometry, policy, LAYERS, EXPERTS, list(range(LAYERS)), seed=3)
    hits, slots, evicted = np.zeros(count, bool), np.zeros(count, np.int64), np.zeros(count, np.int64)
    access_sequence(
        *state.args(), layers, experts, np.linspace(0.1, 1.0, count), np.arange(count, dtype=np.int64) // 2,
        next_use_of(layers * EXPERTS + experts), hits, slots, evicted,
    )  # fmt: skip
    return hits


@settings(max_examples=150, deadline=None)
@given(accesses, st.integers(1, LAYERS * EXPERTS - 1))
def test_fully_associative_lru_never_loses_a_hit_when_capacity_grows(seq, capacity):
    smaller = hits_of(seq, Geometry(1, capacity), "lru")
    larger = hits_of(seq, Geometry(1, capacity + 1), "lru")
    assert np.all(larger[smaller]), "an access that hit with fewer slots missed with more"


@settings(max_examples=150, deadline=None)
@given(accesses, st.integers(1, 4), st.integers(1, 4), st.sampled_from(["modulo", "layer"]))
def test_belady_hits_at_least_as_often_as_every_policy(seq, sets, ways, mapping):
    geometry = Geometry(sets, ways, mapping)
    optimum = hits_of(seq, geometry, "belady").sum()
    for name in POLICIES:
        assert hits_of(seq, geometry, name).sum() <= optimum, name


@settings(max_examples=100, deadline=None)
@given(accesses, st.integers(1, 4), st.integers(1, 4), st.sampled_from(sorted(POLICIES)))
def test_a_resident_key_sits_in_its_own_set_and_appears_once(seq, sets, ways, policy):
    geometry = Geometry(sets, ways)
    state = new_state(geometry, policy, LAYERS, EXPERTS, list(range(LAYERS)))
    count = len(seq)
    buffers = np.zeros(count, bool), np.zeros(count, np.int64), np.zeros(count, np.int64)
    layers = np.array([a[0] for a in seq], np.int64)
    experts = np.array([a[1] for a in seq], np.int64)
    access_sequence(*state.args(), layers, experts, np.ones(count), np.arange(count, dtype=np.int64),
                    next_use_of(layers * EXPERTS + experts), *buffers)  # fmt: skip
    held = state.tags[state.tags >= 0]
    assert len(set(held.tolist())) == len(held)
    for slot, key in enumerate(state.tags):
        if key >= 0:
            assert slot // ways == state.set_of_key[key]
            assert state.location[key] == slot
