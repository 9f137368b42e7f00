"""The `markov` policy's model: will an expert be used at its layer's next visit?

It predicts from the latest visit of every MoE layer, not only from the key's own layer: the
experts a token was routed to in one layer say more about its experts in the next layers than
the previous token's experts in those layers do (on the Mixtral traces, the same token's
previous layer predicts a layer's experts better than the layer's own previous token). Every
pair of visits is evidence, counted online per target layer and gap in layer visits between
the two: ``likelihood[target, gap, a, e]`` counts the target visits that used ``e`` that many
visits after a visit that used ``a``. The evidence of all latest visits is combined as naive
Bayes on the expert's own frequency in its layer.

A miss ranks every way of a set, so the summed evidence of each key is kept current as visits
arrive instead of being recomputed per candidate: a new visit of a layer replaces that layer's
previous visit as evidence for every key, and the layer's own keys, now waiting for the next
token, have their evidence recomputed. Each contribution is priced with the counts of the
moment it arrives.

All functions are ``inline="always"`` so the cache core's single compiled loop stays one loop.
Counts are int32 (exact for 2^31 visits); the tables take ``L x 2L x E x (E + 1) x 4`` bytes
for L MoE layers of E experts (0.3 MB for Mixtral, 8.5 MB for OLMoE, 300 MB for Qwen3-30B-A3B).
"""

from __future__ import annotations

import numpy as np
from numba import njit


def new_markov_arrays(num_moe_layers: int, num_experts: int, num_keys: int) -> tuple[np.ndarray, ...]:
    """Empty (likelihood, layer_counts, recent, evidence) for a model of this shape.

    ``layer_counts[o]``: per expert the visits of MoE layer o that used it, then all visits.
    ``recent``: a ring of the last 2L visits as [layer, number of experts, experts...], its
    last row holding the visit count and the model version. ``evidence[o * E + e]``: the log-odds each layer's latest
    visit contributes to (o, e) being used at o's next visit, then their sum.
    """
    layers, experts, span = num_moe_layers, num_experts, 2 * num_moe_layers
    return (
        np.zeros((layers, span, experts, experts + 1), dtype=np.int32),
        np.zeros((layers, experts + 1), dtype=np.int64),
        np.zeros((span + 1, experts + 2), dtype=np.int64),
        np.zeros((num_keys, layers + 1), dtype=np.float64),
    )


@njit(cache=True, inline="always")
def _frequency(layer_counts, layer, expert, num_experts):
    """Share of the layer's visits that used the expert, starting from one in E."""
    return (layer_counts[layer, expert] + 1.0 / num_experts) / (layer_counts[layer, num_experts] + 1.0)


@njit(cache=True, inline="always")
def _conditional(likelihood, layer, gap, source, expert, prior):
    """P(expert at the layer's visit | source expert `gap` visits before), starting from the prior."""
    return (likelihood[layer, gap, source, expert] + prior) / (likelihood[layer, gap, source, -1] + 1.0)


@njit(cache=True, inline="always")
def _evidence(likelihood, layer_counts, layer, gap, source, expert, num_experts):
    """Log-odds the source expert adds to the expert's use at the layer's visit `gap` visits later."""
    prior = _frequency(layer_counts, layer, expert, num_experts)
    p = _conditional(likelihood, layer, gap, source, expert, prior)
    return np.log(p * (1.0 - prior) / ((1.0 - p) * prior))


@njit(cache=True, inline="always")
def _layer_of(key, layer_ordinal, num_experts):
    return layer_ordinal[key // num_experts]


@njit(cache=True, inline="always")
def refresh_evidence(likelihood, layer_counts, recent, evidence, key, distance, layer_ordinal, num_experts):
    """Price anew what every layer's latest visit says about the key, whose layer is next visited
    `distance` visits after the latest visit: used for a key entering the cache or wanted by a miss."""
    cycle = layer_counts.shape[0]
    span = 2 * cycle
    layer = _layer_of(key, layer_ordinal, num_experts)
    expert = key % num_experts
    latest = recent[span, 0] - 1
    row = evidence[key]
    row[:] = 0.0
    for back in range(min(cycle, latest + 1)):
        source = recent[(latest - back) % span]
        total = 0.0
        for j in range(source[1]):
            total += _evidence(likelihood, layer_counts, layer, distance + back, source[2 + j], expert, num_experts)
        row[source[0]] = total
        row[cycle] += total


@njit(cache=True, inline="always")
def _count_after_earlier(likelihood, recent, layer, visit, column):
    """Count ``visit`` (of ``layer``) in ``column`` after each expert of every earlier visit in the
    ring: the target-visit total (column E), or an expert the visit used."""
    span = recent.shape[0] - 1
    for gap in range(1, min(span, visit + 1)):
        earlier = recent[(visit - gap) % span]
        for j in range(earlier[1]):
            likelihood[layer, gap, earlier[2 + j], column] += 1


@njit(cache=True, inline="always")
def start_visit(likelihood, layer_counts, recent, evidence, layer, tags, layer_ordinal, num_experts):
    """A new visit of MoE layer `layer` begins; its experts follow through :func:`add_expert`.

    Evidence is kept only for the keys in the cache (``tags``), the only ones a miss ranks."""
    cycle = layer_counts.shape[0]
    span = 2 * cycle
    visit = recent[span, 0]
    recent[span, 0] += 1
    recent[span, 1] += 1
    recent[visit % span, 0] = layer
    recent[visit % span, 1] = 0
    layer_counts[layer, num_experts] += 1
    _count_after_earlier(likelihood, recent, layer, visit, num_experts)
    for key in tags:
        if key < 0:
            continue
        if _layer_of(key, layer_ordinal, num_experts) == layer:  # now waiting for the next token
            refresh_evidence(likelihood, layer_counts, recent, evidence, key, cycle, layer_ordinal, num_experts)
        else:  # the layer's previous visit is no longer its latest
            evidence[key, cycle] -= evidence[key, layer]
            evidence[key, layer] = 0.0


@njit(cache=True, inline="always")
def add_expert(likelihood, layer_counts, recent, evidence, layer, expert, tags, layer_ordinal, num_experts):
    """The current visit of `layer` uses `expert`: learn from it, then count it as evidence."""
    cycle = layer_counts.shape[0]
    span = 2 * cycle
    visit = recent[span, 0] - 1
    current = recent[visit % span]
    for j in range(current[1]):
        if current[2 + j] == expert:
            return
    current[2 + current[1]] = expert
    current[1] += 1
    recent[span, 1] += 1
    layer_counts[layer, expert] += 1
    _count_after_earlier(likelihood, recent, layer, visit, expert)
    for key in tags:
        if key < 0:
            continue
        target = _layer_of(key, layer_ordinal, num_experts)
        gap = (target - layer) % cycle
        if gap == 0:
            gap = cycle
        added = _evidence(likelihood, layer_counts, target, gap, expert, key % num_experts, num_experts)
        evidence[key, layer] += added
        evidence[key, cycle] += added


@njit(cache=True, inline="always")
def model_version(recent):
    """Changes whenever anything is learned: what was priced at the same version still holds."""
    return recent[-1, 1]


@njit(cache=True, inline="always")
def next_visit_reuse(layer_counts, evidence, key, layer, expert, num_experts):
    """P(the expert is used at its layer's next visit | the latest visit of every layer)."""
    prior = _frequency(layer_counts, layer, expert, num_experts)
    log_odds = np.log(prior / (1.0 - prior)) + evidence[key, -1]
    return 1.0 / (1.0 + np.exp(-log_odds))


@njit(cache=True, inline="always")
def later_visit_reuse(likelihood, layer_counts, recent, layer, expert, distance, num_experts):
    """P(the expert is used at a visit of its layer | the layer's visit before): the chance per
    visit after the next one, from the layer's own latest visit (`cycle - distance` visits ago).
    The mean over that visit's experts, so a rarely seen one falls back on the frequency."""
    cycle = layer_counts.shape[0]
    span = 2 * cycle
    prior = _frequency(layer_counts, layer, expert, num_experts)
    visit = recent[span, 0] - 1 - (cycle - distance)
    if visit < 0 or recent[visit % span, 0] != layer or recent[visit % span, 1] == 0:
        return prior
    latest = recent[visit % span]
    total = 0.0
    for j in range(latest[1]):
        total += _conditional(likelihood, layer, cycle, latest[2 + j], expert, prior)
    return total / latest[1]
