"""Simulator speed: one replay of a 100,000-token Mixtral-shaped trace, and a 200-configuration sweep.

    python benchmarks/replay_speed.py [--tokens 100000] [--workers 2]

Goals (issue 2): >= 20 M accesses/s on one core for LRU with timing; 200 configurations of that
trace in under 60 s on 2 cores. Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from expertcache.simulator.costs import load_profile
from expertcache.simulator.engine import ReplayInput, simulate
from expertcache.simulator.geometry import Geometry, geometries_for_slots
from expertcache.simulator.sweep import candidates, run_sweep
from expertcache.traces.synthetic import synthetic_trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    machine = f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores"

    trace = synthetic_trace(args.tokens, seed=1)
    replay = ReplayInput.from_trace(trace)
    profile = load_profile("h100")
    threads = profile.thread_counts[-1]
    for policy in ("lru", "fifo", "random", "lfu", "score", "eta", "markov", "belady"):
        for geometry in (Geometry(14, 4), Geometry(1, 56)):
            simulate(replay, Geometry(2, 2), policy, profile, threads)  # compile outside the timing
            seconds = float("inf")
            for _ in range(3):  # best of three: the machine is shared
                start = time.perf_counter()
                result = simulate(replay, geometry, policy, profile, threads)
                seconds = min(seconds, time.perf_counter() - start)
            print(json.dumps({"bench": "replay", "policy": policy, "geometry": str(geometry),
                              "accesses": replay.num_accesses, "seconds": round(seconds, 3),
                              "accesses_per_s": round(replay.num_accesses / seconds),
                              "hit_rate": round(result.hit_rate, 4), "machine": machine}))  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mixtral-shaped.parquet"
        table = pa.Table.from_pandas(trace.frame, schema=trace.meta.schema(), preserve_index=False)
        pq.write_table(table, path)
        todo = candidates(geometries_for_slots(56, 2)[:50], ["lru", "fifo", "random", "eta"], [threads])
        start = time.perf_counter()
        run_sweep([path], todo, profile, executor="process", workers=args.workers)
        seconds = time.perf_counter() - start
        print(json.dumps({"bench": "sweep", "configurations": len(todo), "accesses_each": replay.num_accesses,
                          "workers": args.workers, "seconds": round(seconds, 1), "machine": machine}))  # fmt: skip


if __name__ == "__main__":
    main()
