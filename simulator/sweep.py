"""Grid search over geometries × policies × CPU thread counts, in local processes or on Ray.

Every configuration is replayed over every trace; a configuration's score is the decode
tokens/s over all traces together (total decode tokens / total decode time).
"""

from __future__ import annotations

import multiprocessing
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import pandas as pd

from expertcache.errors import ConfigError
from expertcache.simulator.config import CacheConfig
from expertcache.simulator.costs import Profile
from expertcache.simulator.engine import ReplayInput, simulate
from expertcache.simulator.geometry import Geometry, geometries_for_slots
from expertcache.simulator.policies import POLICIES, get_policy
from expertcache.traces.io import read_trace

EXECUTORS = ("process", "serial", "ray")


@dataclass(frozen=True)
class Candidate:
    sets: int
    ways: int
    policy: str
    threads: int


def candidates(geometries: Sequence[Geometry], policies: Sequence[str], threads: Sequence[int]) -> list[Candidate]:
    for name in policies:
        get_policy(name)
    return [Candidate(g.sets, g.ways, p, t) for g, p, t in product(geometries, policies, threads)]


def runnable_candidates(slots: int, top_k: int, threads: Sequence[int]) -> list[Candidate]:
    """Every geometry of ``slots`` × every policy the runtime can run (not the offline bounds) × ``threads``:
    what a machine's configuration is chosen from."""
    online = [name for name, policy in POLICIES.items() if not policy.offline_only]
    return candidates(geometries_for_slots(slots, top_k), online, threads)


def _evaluate(replays: Sequence[ReplayInput], profile: Profile, candidate: Candidate) -> list[dict]:
    rows = []
    for index, replay in enumerate(replays):
        result = simulate(replay, Geometry(candidate.sets, candidate.ways), candidate.policy, profile, candidate.threads)
        rows.append({"trace": index, "decode_tokens": replay.decode_tokens, **result.summary()})
    return rows


_worker_replays: list[ReplayInput] = []


def _init_worker(paths: Sequence[str]) -> None:
    global _worker_replays
    _worker_replays = [ReplayInput.from_trace(read_trace(p)) for p in paths]


def _evaluate_in_worker(profile: Profile, candidate: Candidate) -> list[dict]:
    return _evaluate(_worker_replays, profile, candidate)


def _run_serial(paths, profile, todo) -> Iterator[list[dict]]:
    replays = [ReplayInput.from_trace(read_trace(p)) for p in paths]
    for candidate in todo:
        yield _evaluate(replays, profile, candidate)


def _run_processes(paths, profile, todo, workers) -> Iterator[list[dict]]:
    """Fresh interpreters ("spawn"), never forks of the caller: `bench` and `tune` sweep from a
    process holding a CUDA context, pinned host memory and spinning OpenMP threads."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(list(paths),)) as pool:
        yield from pool.map(_evaluate_in_worker, [profile] * len(todo), todo, chunksize=max(1, len(todo) // (8 * workers)))


RAY_CONNECT_TIMEOUT_S = 10
"""How long a cluster address may take to accept a connection before the sweep gives up on it."""


def check_ray_address(address: str | None) -> None:
    """Refuse a cluster ``address`` (``host:port`` or ``ray://host:port``) that accepts no
    connection: ``ray.init`` retried one on localhost for over ten minutes before failing."""
    if address in (None, "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except ValueError:
        raise ConfigError(f"'{address}' is not a Ray cluster address (host:port, or ray://host:port)") from None
    except OSError as error:
        raise ConfigError(f"cannot reach a Ray cluster at {address}: {error.strerror or error}") from None


def _run_ray(paths, profile, todo, address) -> Iterator[list[dict]]:
    try:
        import ray
    except ImportError:
        raise ConfigError("the Ray executor needs Ray: pip install 'expertcache[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        check_ray_address(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except ConnectionError as error:
            raise ConfigError(f"cannot reach a Ray cluster at {address}: {error}") from None
    try:
        replays_ref = ray.put([ReplayInput.from_trace(read_trace(p)) for p in paths])
        remote = ray.remote(_evaluate)
        pending = [remote.remote(replays_ref, profile, c) for c in todo]
        for ref in pending:
            yield ray.get(ref)
    finally:
        if started_here:
            ray.shutdown()


def run_sweep(
    trace_paths: Sequence[str | Path],
    todo: Sequence[Candidate],
    profile: Profile,
    executor: str = "process",
    workers: int | None = None,
    address: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Evaluate every candidate on every trace; one row per (candidate, trace)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor '{executor}'; known: {', '.join(EXECUTORS)}")
    paths = [str(p) for p in trace_paths]
    workers = workers or max(1, min(os.cpu_count() or 1, len(todo)))
    if executor == "serial" or (executor == "process" and workers == 1):
        batches = _run_serial(paths, profile, todo)
    elif executor == "process":
        batches = _run_processes(paths, profile, todo, workers)
    else:
        batches = _run_ray(paths, profile, todo, address)
    rows = []
    for batch in batches:
        rows.extend(batch)
        if on_progress:
            on_progress(1)
    return pd.DataFrame(rows)


def rank(results: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration over all traces, best predicted decode tokens/s first."""
    keys = ["sets", "ways", "slots", "policy", "threads"]
    grouped = results.groupby(keys, as_index=False).agg(
        hits=("hits", "sum"), misses=("misses", "sum"), decode_s=("decode_s", "sum"), decode_tokens=("decode_tokens", "sum")
    )
    grouped["hit_rate"] = grouped.hits / (grouped.hits + grouped.misses)
    grouped["tokens_per_s"] = grouped.decode_tokens / grouped.decode_s
    grouped["offline_only"] = grouped.policy.map(lambda p: get_policy(p).offline_only)
    return grouped.sort_values(["tokens_per_s", "hit_rate", "slots"], ascending=[False, False, True], kind="stable").reset_index(drop=True)


def best_config(ranked: pd.DataFrame, budget_bytes: int | None) -> CacheConfig:
    """The fastest configuration that the runtime can execute (offline-only bounds excluded)."""
    runnable = ranked[~ranked.offline_only]
    if runnable.empty:
        raise ConfigError("no runnable configuration: every swept policy is offline-only")
    top = runnable.iloc[0]
    return CacheConfig(sets=int(top.sets), ways=int(top.ways), policy=str(top.policy), threads=int(top.threads), budget_bytes=budget_bytes)
