"""Where a decode layer's time goes, by how its misses ran: from per-layer timing files.

    python benchmarks/layer_breakdown.py layers.parquet
    python benchmarks/layer_breakdown.py layers.parquet --profile bench.json   # and the calibrated terms

Reads what ``expertcache bench --timing-out`` or ``benchmarks/fidelity_gpu.py --timing-out`` writes
(the recordings' timing siblings, docs/trace-format.md). For each system (or policy) and kind of
layer, the mean milliseconds of a decode layer from its routing to the next layer's routing
(``wall``), as the miss rule priced it, of which the host spent inside the experts function
(``host``; of that, computing on the CPU: ``cpu``, which the rule priced at ``cpu priced``), and what
came after it until the next routing
(``after``: the next layer's dense work, and waiting for the GPU). ``copy wait`` is the GPU's time
waiting for copies, ``gpu`` the GPU time of the work the layer queued (those waits included). A kind whose ``after`` exceeds the all-hit layers'
is waiting for GPU work the host queued; one whose ``host - cpu`` grows is paying host time the
CPU's experts do not account for.

With ``--profile`` (a bench's or fidelity run's results, or a calibrated profile), the terms that
price a decode layer are set beside what the runs' layers paid for them: the dense time (all-hit
layers less their GPU launches), the one-token CPU expert (layers computing every miss on the CPU,
with whatever copies ran beside them) and the CPU path's cost (those layers' time beyond their
experts and the dense time).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from expertcache.simulator.costs import Profile

COLUMNS = {"wall": "wall_s", "priced": "planned_s", "host": "host_s", "cpu": "cpu_s", "cpu priced": "cpu_priced_s", "copy wait": "copy_wait_s",
           "gpu": "gpu_s"}  # fmt: skip
"""Per-layer timing columns shown; ``cpu_priced_s`` exists in timing files written from session 20 on."""


def breakdown(timing: pd.DataFrame) -> pd.DataFrame:
    """Mean milliseconds per decode layer (those timed to the next routing), by system or policy and kind."""
    decode = timing[(timing.phase == "decode") & timing.wall_s.notna()]
    by = "system" if "system" in decode else "policy"
    shown = {name: column for name, column in COLUMNS.items() if column in decode}
    table = decode.groupby([by, "kind"]).agg(layers=("wall_s", "size"), **{name: (column, "mean") for name, column in shown.items()})
    table[list(shown)] *= 1e3
    table["host - cpu"] = table.host - table.cpu
    table["after"] = table.wall - table.host
    return table.round(2)


def against_profile(timing: pd.DataFrame, profile: Profile, threads: int) -> pd.DataFrame:
    """The calibrated terms that price a decode layer, next to what the runs' decode layers paid."""
    decode = timing[(timing.phase == "decode") & timing.wall_s.notna()]
    top_k = int((decode.hits + decode.misses).median())
    hits, on_cpu = decode[decode.kind == "hits"], decode[decode.kind == "cpu"]
    dense = 1e3 * hits.wall_s.mean() - top_k * profile.gpu_launch_ms
    nearest = profile.nearest_thread_count(threads)  # the row the runtime priced with
    rows = {
        "dense ms per layer": (profile.dense_ms[1], dense, len(hits)),
        f"CPU expert ms, one token, {nearest} threads": (
            profile.cpu_expert_ms[nearest][1], 1e3 * (on_cpu.cpu_s / on_cpu.misses).mean(), int(on_cpu.misses.sum())),
        "CPU path ms per layer": (profile.cpu_path_overhead_ms, 1e3 * (on_cpu.wall_s - on_cpu.cpu_s).mean() - dense, len(on_cpu)),
    }  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index", columns=["calibrated", "in the runs", "from"]).round(2)


def read_profile(path: Path) -> tuple[Profile, int | None]:
    """A profile, from results that carry one (with their thread count, where named) or on its own."""
    data = json.loads(path.read_text())
    if "profile" not in data:
        return Profile.from_json(path), None
    return Profile(**data["profile"]), data.get("setup", {}).get("threads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("timing", nargs="+", help="per-layer timing Parquet files")
    parser.add_argument("--profile", type=Path, help="results JSON (bench, fidelity_gpu.py) or a profile whose terms to check")
    parser.add_argument("--threads", type=int, help="CPU threads the runs computed with [default: the bench's, else 15]")
    args = parser.parse_args()
    profile, threads = read_profile(args.profile) if args.profile else (None, None)
    for path in args.timing:
        timing = pd.read_parquet(path)
        print(f"{path}: ms per decode layer\n{breakdown(timing).to_string()}\n")
        if profile is not None:
            terms = against_profile(timing, profile, args.threads or threads or 15)
            print(f"calibrated ({args.profile.name}) against the runs' layers\n{terms.to_string()}\n")


if __name__ == "__main__":
    main()
