"""Replacement policies as priority keys.

Each way of a set carries a priority; the victim is the way with the smallest (priority,
tie-break). A policy is only how that priority is set on insert and on hit, and whether a
newcomer may be refused (bypassed) instead of evicting anyone. Keeping every policy in this
form lets one compiled loop (``cache.access``) serve the simulator and the runtime alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from expertcache.errors import ConfigError

LRU, FIFO, LFU, RANDOM, SCORE, BELADY, ETA, MARKOV = range(8)

DEFAULT_POLICY = "markov"
"""The policy used where none is named: the best online policy on the real traces (BENCHMARKS.md)."""

DEFAULT_DECAY = 0.95
"""Per-forward-pass decay of the score and eta statistics: a half-life of about 14 passes."""


@dataclass(frozen=True)
class Policy:
    name: str
    code: int
    description: str
    may_bypass: bool
    offline_only: bool = False


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in [
        Policy("lru", LRU, "least recently used: evict the way touched longest ago", False),
        Policy("fifo", FIFO, "first in, first out: evict the way inserted longest ago", False),
        Policy("lfu", LFU, "least frequently used since insertion; ties go to the least recent", False),
        Policy("random", RANDOM, "evict a uniformly random way (seeded, reproducible)", False),
        Policy("score", SCORE, "HybriMoE score: evict the lowest router weight, decayed per forward pass", False),
        Policy(
            "eta",
            ETA,
            "expected time to next use from the layer cycle and decayed frequency; may bypass (online)",
            True,
        ),
        Policy(
            "markov",
            MARKOV,
            "expected time to next use, predicted from every layer's latest experts (learned online); may bypass",
            True,
        ),
        Policy("belady", BELADY, "offline optimum: keep what is used soonest, may bypass (simulator only)", True, True),
    ]
}


def get_policy(name: str) -> Policy:
    """Look a policy up by its command-line name."""
    try:
        return POLICIES[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown policy '{name}'; known: {', '.join(POLICIES)}") from None


def online_policy(name: str) -> Policy:
    """``name``'s policy, refused when it needs the trace's future: such a policy runs only in the
    simulator, and a live run is told so before it loads anything."""
    policy = get_policy(name)
    if policy.offline_only:
        raise ConfigError(f"policy '{name}' needs the future of the trace and runs only in the simulator")
    return policy
