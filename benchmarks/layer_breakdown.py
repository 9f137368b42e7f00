"""Where a decode layer's time goes, by how its misses ran: from per-layer timing files.

    python benchmarks/layer_breakdown.py layers.parquet

Reads what ``expertcache bench --timing-out`` or ``benchmarks/fidelity_gpu.py --timing-out`` writes
(the recordings' timing siblings, docs/trace-format.md). For each system (or policy) and kind of
layer, the mean milliseconds of a decode layer from its routing to the next layer's routing
(``wall``), as the miss rule priced it, of which the host spent inside the experts function
(``host``; of that, computing on the CPU: ``cpu``), and what came after it until the next routing
(``after``: the next layer's dense work, and waiting for the GPU). ``copy wait`` is the GPU's time
waiting for copies, ``gpu`` the GPU time of the work the layer queued (those waits included). A kind whose ``after`` exceeds the all-hit layers'
is waiting for GPU work the host queued; one whose ``host - cpu`` grows is paying host time the
CPU's experts do not account for.
"""

from __future__ import annotations

import argparse

import pandas as pd

COLUMNS = {"wall": "wall_s", "priced": "planned_s", "host": "host_s", "cpu": "cpu_s", "copy wait": "copy_wait_s", "gpu": "gpu_s"}


def breakdown(timing: pd.DataFrame) -> pd.DataFrame:
    """Mean milliseconds per decode layer (those timed to the next routing), by system or policy and kind."""
    decode = timing[(timing.phase == "decode") & timing.wall_s.notna()]
    by = "system" if "system" in decode else "policy"
    table = decode.groupby([by, "kind"]).agg(layers=("wall_s", "size"), **{name: (column, "mean") for name, column in COLUMNS.items()})
    table[list(COLUMNS)] *= 1e3
    table["host - cpu"] = table.host - table.cpu
    table["after"] = table.wall - table.host
    return table.round(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("timing", nargs="+", help="per-layer timing Parquet files")
    args = parser.parse_args()
    for path in args.timing:
        print(f"{path}: ms per decode layer\n{breakdown(pd.read_parquet(path)).to_string()}\n")


if __name__ == "__main__":
    main()
