"""expertcache with its CPU paced (``runtime.cpu_pace``) and with the profile's CPU price, in one bench.

``expertcache bench`` with only the expertcache system, each of its runs done twice, paced and not,
the order flipped every round: same calibration, same chosen configuration, same forced routing.
The arguments after ``--out`` are ``expertcache bench``'s.

    python benchmarks/pace_ab_gpu.py --out pace-ab.json bench --synthetic mixtral-8x7b --budget 24GiB \\
        --trace mixtral-gsm8k.parquet --requests 2 --prompt-tokens 16 --new-tokens 32 --threads 15 \\
        --rounds 4 --systems expertcache --out bench-ab.json
"""

from __future__ import annotations

import json
import sys

from expertcache.runtime.cpu_threads import keep_cpu_threads_spinning

keep_cpu_threads_spinning()  # before torch loads OpenMP, as the CLI's model commands do

import expertcache.runtime.bench as bench  # noqa: E402
from expertcache.cli import main as cli  # noqa: E402
from expertcache.runtime.loader import attach  # noqa: E402


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[1] != "--out":
        sys.exit(__doc__)
    out, bench_args = sys.argv[2], sys.argv[3:]
    mode = {"pace": True, "calls": 0}
    run_system = bench.run_system
    results = []

    def both(model, host, top_k, system, config, setup, profile, record_path):
        order = (True, False) if mode["calls"] % 2 == 0 else (False, True)
        mode["calls"] += 1
        rows = {}
        for pace in order:
            mode["pace"] = pace
            row = rows[pace] = run_system(model, host, top_k, system, config, setup, profile, record_path.with_name(f"{pace}-{record_path.name}"))
            kinds = row["measured"]["layers_by_kind"]
            result = {"pace": pace, "tok/s": round(row["decode_tokens_per_s"], 3), "cpu_after": round(row["cpu_expert_ms_after"], 2),
                      "scale": row["cpu_pace_scale"], "calibrated": profile.cpu_expert_ms[setup.threads][1],
                      "predicted": round(row["predicted_tokens_per_s"], 3), "roofline": round(row["roofline_tokens_per_s"], 3),
                      "kinds": {k: [v["layers"], round(1e3 * v["wall_s"] / max(v["layers"], 1), 2)] for k, v in kinds.items()}}  # fmt: skip
            print(json.dumps(result), flush=True)
            results.append(result)
            with open(out, "w") as f:
                json.dump(results, f, indent=1)
        return rows[True]

    bench.attach = lambda *a, **k: attach(*a, **k, pace_cpu=mode["pace"])
    bench.run_system = both
    cli(bench_args, standalone_mode=True)


if __name__ == "__main__":
    main()
