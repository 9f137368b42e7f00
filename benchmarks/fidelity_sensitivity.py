"""Which cost term could explain a fidelity bias: each run's prediction re-priced without one term.

For every configuration of a fidelity_gpu.py result, the simulator prices the routing trace twice,
with the run's calibrated profile and with one term neutralised; each run's prediction is scaled by
that ratio and set against its measurement. Printed per term: the median and worst |error| and
the mean signed error of the CPU-heavy policies (eta, markov) and of lru. Where the runs counted
their splits (run 8 on), also the CPU time per whole CPU expert and per split that best fits the
runs' measured CPU time (least squares):

    python benchmarks/fidelity_sensitivity.py --trace ../shared/traces/mixtral-gsm8k.parquet benchmarks/results/fidelity-h100-run8.json

The scaling is approximate (the runs recorded their own, shorter traces); it says which terms
could carry a bias, not which one does.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace

import numpy as np
from expertcache.simulator.costs import Profile
from expertcache.simulator.engine import ReplayInput, simulate
from expertcache.simulator.geometry import Geometry
from expertcache.traces.io import read_trace

NEUTRALISED = {
    "as calibrated": {},
    "no CPU-path overhead": {"cpu_path_overhead_ms": 0.0},
    "no CPU slowdown under copies": {"cpu_slowdown_during_copy": 1.0},
    "no copy slowdown under CPU work": {"copy_slowdown_during_cpu": 1.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", required=True)
    parser.add_argument("--threads", type=int, default=15)
    parser.add_argument("results", nargs="+")
    args = parser.parse_args()
    replay = ReplayInput.from_trace(read_trace(args.trace))
    for path in args.results:
        result = json.load(open(path))
        profile = Profile(**result["profile"])
        print(f"{path}:")
        for term, change in NEUTRALISED.items():
            ratios: dict[tuple, float] = {}
            errors: list[tuple[str, float]] = []
            for row in result["rows"]:
                key = (row["policy"], row["sets"], row["ways"])
                if key not in ratios:
                    geometry = Geometry(row["sets"], row["ways"])
                    base = simulate(replay, geometry, row["policy"], profile, args.threads).tokens_per_s
                    ratios[key] = simulate(replay, geometry, row["policy"], replace(profile, **change), args.threads).tokens_per_s / base
                errors.append((row["policy"], row["predicted_tokens_per_s"] * ratios[key] / row["measured_tokens_per_s"] - 1))
            size = [abs(e) for _, e in errors]
            hybrid = statistics.fmean(e for policy, e in errors if policy != "lru")
            lru = statistics.fmean(e for policy, e in errors if policy == "lru")
            print(f"  {term}: median |error| {statistics.median(size):.1%}, worst {max(size):.1%}; "
                  f"mean error eta/markov {hybrid:+.1%}, lru {lru:+.1%}")  # fmt: skip
        if all("measured_split" in row for row in result["rows"]):
            counts = np.array([[row["cpu_experts"], row["measured_split"]] for row in result["rows"]], dtype=float)
            cpu_s = np.array([row["measured_cpu_s"] for row in result["rows"]])
            whole, split = 1e3 * np.linalg.lstsq(counts, cpu_s, rcond=None)[0]
            print(f"  measured CPU time fits {whole:.2f} ms per whole CPU expert and {split:.2f} ms per split's CPU share")


if __name__ == "__main__":
    main()
