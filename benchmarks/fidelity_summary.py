"""The fidelity goals, read from fidelity_gpu.py results: per file, and pooled over all files given.

    python benchmarks/fidelity_summary.py benchmarks/results/fidelity-h100-run4.json benchmarks/results/fidelity-h100-run5.json

Per run: the error of each measured run against its prediction. Per configuration: the error of
the median measured speed over its repeats, and how far two repeats of it lie apart (the machine's
own noise, which no cost model can predict). The simulator's first choice is the configuration
with the highest predicted speed (averaged over the files' profiles when pooled), set against the
configuration with the highest median measured speed; a playoff (``fidelity_gpu.py --playoff``)
sets the two against each other again in fresh runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from expertcache.runtime.stats import LayerTimes


def run_errors(rows: list[dict], key: str = "error") -> tuple[float, float] | None:
    """Median and worst absolute error of single runs (``key``: "error" against the start
    profile, "error_local" against the CPU re-measured around each run); None if not recorded."""
    errors = [abs(r[key]) for r in rows if key in r]
    return (statistics.median(errors), max(errors)) if errors else None


def _by_config(rows: list[dict]) -> dict[tuple, list[dict]]:
    by_config: dict[tuple, list[dict]] = {}
    for r in rows:
        by_config.setdefault((r["policy"], r["sets"], r["ways"]), []).append(r)
    return by_config


def _medians(by_config: dict[tuple, list[dict]]) -> tuple[dict[tuple, float], dict[tuple, float]]:
    """Each configuration's median measured and mean predicted tokens/s."""
    measured = {key: statistics.median(r["measured_tokens_per_s"] for r in runs) for key, runs in by_config.items()}
    predicted = {key: statistics.fmean(r["predicted_tokens_per_s"] for r in runs) for key, runs in by_config.items()}
    return measured, predicted


def first_choice(rows: list[dict]) -> tuple[tuple, tuple]:
    """(policy, sets, ways) of the simulator's first choice and of the measured best, over the
    passes' runs (a playoff's are left out)."""
    return _chosen_and_best(*_medians(_by_config([r for r in rows if not r.get("playoff")])))


def _chosen_and_best(measured: dict[tuple, float], predicted: dict[tuple, float]) -> tuple[tuple, tuple]:
    return max(predicted, key=predicted.get), max(measured, key=measured.get)


def summarise(rows: list[dict]) -> str:
    """The goals' figures over the passes' runs, then the playoff's (``fidelity_gpu.py --playoff``)
    when there is one."""
    playoff = [r for r in rows if r.get("playoff")]
    rows = [r for r in rows if not r.get("playoff")]
    by_config = _by_config(rows)
    measured, predicted = _medians(by_config)
    lines = [f"{len(rows)} runs of {len(by_config)} configurations"]
    for key, what in (("error", "start profile"), ("error_local", "CPU re-measured around each run")):
        if errors := run_errors(rows, key):
            lines.append(f"per run, {what}: median |error| {errors[0]:.1%}, worst {errors[1]:.1%}")
    errors = [abs(predicted[key] / measured[key] - 1) for key in by_config]
    lines.append(f"per configuration, median of its runs: median |error| {statistics.median(errors):.1%}, worst {max(errors):.1%}")
    spreads = [_spread(runs) for runs in by_config.values() if len(runs) > 1]
    if spreads:
        lines.append(f"repeats of one configuration lie apart by {statistics.median(spreads):.1%} (median), {max(spreads):.1%} (most)")
    if all("predicted_local_tokens_per_s" in r and "measured_split" in r for r in rows):
        lines.append(_excess_per_split(rows))
    if any("layers_by_kind" in r for r in rows):
        lines.append(_layers_by_kind(rows))
    chosen, best = _chosen_and_best(measured, predicted)
    lines.append(f"simulator's first choice {_name(chosen)} measured {measured[chosen] / measured[best]:.1%} of the measured best {_name(best)}")
    if playoff:
        lines.append(_playoff(playoff))
    return "\n".join(lines)


def _playoff(rows: list[dict]) -> str:
    """The first choice against the passes' measured best in fresh runs taking turns: the highest of
    many noisy medians is measured high (the winner's curse), and a rerun of the two is not."""
    runs = {role: [r for r in rows if r["playoff"] == role] for role in ("first choice", "measured best")}
    speed = {role: statistics.median(r["measured_tokens_per_s"] for r in role_runs) for role, role_runs in runs.items()}
    chosen, best = (_name((r[0]["policy"], r[0]["sets"], r[0]["ways"])) for r in runs.values())
    return (f"playoff, {len(runs['first choice'])} fresh runs each taking turns: first choice {chosen} measured "
            f"{speed['first choice'] / speed['measured best']:.1%} of {best} (medians {speed['first choice']:.2f} and {speed['measured best']:.2f} tok/s)")


def _excess_per_split(rows: list[dict]) -> str:
    """Decode time beyond the prediction at the CPU speed measured around each run, fitted by least
    squares as a constant plus a cost per split miss: what a split costs that the model does not charge."""
    tokens = [r["measured_decode_s"] * r["measured_tokens_per_s"] for r in rows]
    excess = np.array([r["measured_decode_s"] - n / r["predicted_local_tokens_per_s"] for r, n in zip(rows, tokens)])
    splits = np.array([r["measured_split"] for r in rows], dtype=float)
    design = np.column_stack([splits, np.ones_like(splits)])
    (per_split, constant), *_ = np.linalg.lstsq(design, excess, rcond=None)
    explained = 1 - np.sum((excess - design @ [per_split, constant]) ** 2) / max(np.sum((excess - excess.mean()) ** 2), 1e-12)
    return (f"decode time beyond the CPU-local prediction: {1e3 * per_split:.2f} ms per split miss, {constant:+.2f} s per run "
            f"(least squares over {len(rows)} runs, R² {explained:.2f})")


def _layers_by_kind(rows: list[dict]) -> str:
    """Decode layers of all runs by how their misses ran: the runtime's measured time per layer
    against what its miss rule priced (from routing to the next layer's routing)."""
    totals: dict[str, LayerTimes] = {}
    for r in rows:
        for kind, layers in r.get("layers_by_kind", {}).items():
            totals[kind] = totals.get(kind, LayerTimes()) + LayerTimes(**layers)
    cells = [f"{kind} {times.describe()}" for kind, times in totals.items()]
    return "decode layers, count: ms measured / priced by the runtime's miss rule (host's part): " + "; ".join(cells)


def _spread(runs: list[dict]) -> float:
    speeds = [r["measured_tokens_per_s"] for r in runs]
    return max(speeds) / min(speeds) - 1


def _name(key: tuple) -> str:
    policy, sets, ways = key
    return f"{policy} {sets}x{ways}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+")
    args = parser.parse_args()
    pooled = []
    for path in args.results:
        rows = json.loads(Path(path).read_text())["rows"]
        pooled += [r for r in rows if not r.get("playoff")]  # each file's playoff compares its own two
        print(f"{path}:\n{summarise(rows)}\n")
    if len(args.results) > 1:
        print(f"pooled:\n{summarise(pooled)}")


if __name__ == "__main__":
    main()
