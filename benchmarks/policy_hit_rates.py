"""Every policy's hit rate against Belady's optimum, per geometry, on recorded traces.

    python benchmarks/policy_hit_rates.py ../shared/traces/mixtral-*.parquet --slots 56

Prints a Markdown table (hit rate, and in brackets the share of Belady's hit rate) for the
fully associative cache and every N x M with N * M = slots, plus the mean over geometries.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from expertcache.simulator.costs import load_profile
from expertcache.simulator.engine import ReplayInput, simulate
from expertcache.simulator.geometry import Geometry
from expertcache.simulator.policies import POLICIES
from expertcache.traces.io import read_trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("traces", nargs="+")
    parser.add_argument("--slots", type=int, default=56)
    args = parser.parse_args()
    profile = load_profile("h100")
    geometries = [Geometry(n, args.slots // n) for n in range(1, args.slots + 1) if args.slots % n == 0]
    online = [p for p in POLICIES if p != "belady"]
    for path in args.traces:
        replay = ReplayInput.from_trace(read_trace(path))
        print(f"\n{Path(path).name}: {replay.num_accesses:,} accesses, {args.slots} slots\n")
        print("| geometry | " + " | ".join(online) + " | belady |")
        print("|---" * (len(online) + 2) + "|")
        shares = {p: [] for p in online}
        for geometry in geometries:
            bound = simulate(replay, geometry, "belady", profile, 16).hit_rate
            cells = []
            for policy in online:
                rate = simulate(replay, geometry, policy, profile, 16).hit_rate
                shares[policy].append(rate / bound)
                cells.append(f"{rate:.1%} ({rate / bound:.0%})")
            print(f"| {geometry.sets}x{geometry.ways} | " + " | ".join(cells) + f" | {bound:.1%} |")
        print("| mean share | " + " | ".join(f"{sum(v) / len(v):.0%}" for v in shares.values()) + " | 100% |")


if __name__ == "__main__":
    main()
