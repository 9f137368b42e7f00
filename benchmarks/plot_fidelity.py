"""Predicted against measured decode tokens/s from fidelity_gpu.py results, as one figure.

    python benchmarks/plot_fidelity.py benchmarks/results/fidelity-h100-run*.json --out docs/fidelity.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from fidelity_summary import run_errors  # noqa: E402

MARKERS = "o^sDvP"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    fig, axes = plt.subplots(1, len(args.results), figsize=(5 * len(args.results), 4.6), squeeze=False, constrained_layout=True)
    for ax, path in zip(axes[0], args.results):
        rows = [r for r in json.loads(Path(path).read_text())["rows"] if not r.get("playoff")]  # the passes' runs
        for policy, marker in zip(dict.fromkeys(r["policy"] for r in rows), MARKERS):
            mine = [r for r in rows if r["policy"] == policy]
            ax.scatter([r["measured_tokens_per_s"] for r in mine], [r["predicted_tokens_per_s"] for r in mine], marker=marker, label=policy)
        low = min(min(r["measured_tokens_per_s"], r["predicted_tokens_per_s"]) for r in rows) * 0.9
        high = max(max(r["measured_tokens_per_s"], r["predicted_tokens_per_s"]) for r in rows) * 1.1
        ax.plot([low, high], [low, high], color="grey", lw=1)
        ax.fill_between([low, high], [low * 0.9, high * 0.9], [low * 1.1, high * 1.1], color="grey", alpha=0.15, label="±10 %")
        median, worst = run_errors(rows)
        ax.set(xlabel="measured decode tokens/s", ylabel="predicted decode tokens/s", xlim=(low, high), ylim=(low, high),
               title=f"{Path(path).stem.split('-')[-1]}: median |error| {median:.1%}, worst {worst:.1%}", )  # fmt: skip
        ax.legend(fontsize=8)
    fig.savefig(args.out, dpi=100)
    print(args.out)


if __name__ == "__main__":
    main()
