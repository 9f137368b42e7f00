"""Price a finished bench's systems again, with its own profile changed in one term.

    python benchmarks/reprice_bench.py benchmarks/results/bench-phi-drawn-h100.json --trace phi-drawn.parquet \\
        --requests 2 --prompt-tokens 16 --new-tokens 24 --set dense_overlap_ms=0,1.5

(Benches that saved their setup need no ``--requests``, ``--prompt-tokens`` nor ``--new-tokens``.)

A bench forces its routing from ``--trace``: each system's run starts that trace afresh and takes
one trace token per position, prompt and decode alike (``runtime.forced``). This rebuilds the
routing each system ran from the same trace and the bench's shape, so that with the profile as it
was it gives the bench's own predictions back (printed side by side as a check), and then prices
it with the term given, against what the bench measured, with each run's roofline at that term (a
term calibrated wrong moves the roofline too). A cost model's term is checked against runs already
made, without a GPU; the runs themselves stay as measured. The miss rule reads the
profile too, so expertcache's row may price a schedule other than the one that ran: its split
count, as run and as priced, says when. Last, the configuration the sweep would choose at that
term, on the same routing and slots, and its predicted ratio over each peer as priced here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from expertcache.runtime.forced import TraceRouting
from expertcache.simulator.costs import Profile
from expertcache.simulator.engine import ReplayInput, simulate
from expertcache.simulator.geometry import Geometry
from expertcache.simulator.roofline import roofline
from expertcache.simulator.sweep import runnable_candidates
from expertcache.traces.io import Trace, read_trace


def priced_at(profile: Profile, name: str, value: float) -> Profile:
    """``profile`` with one term at ``value``. The dense time is a table by token count: ``value``
    replaces its one-token point, the one decode pays, which calibration reads with most spread."""
    if name == "dense_ms":
        return dataclasses.replace(profile, dense_ms=profile.dense_ms | {1: value})
    return dataclasses.replace(profile, **{name: value})


def forced_routing(trace: Trace, requests: int, prompt_tokens: int, new_tokens: int) -> ReplayInput:
    """The routing a bench of this shape forced from ``trace``: each request's prompt, then one
    decode pass per new token but the first (which the prompt's pass yields)."""
    meta = trace.meta
    forced = TraceRouting(trace, meta.moe_layers, meta.num_experts, meta.top_k)  # the bench's own reading of the trace
    experts, weights = forced.experts, forced.weights
    positions = prompt_tokens + new_tokens - 1
    token = np.arange(requests * positions) % forced.tokens  # the trace cycles at its end
    request, position = np.divmod(np.arange(requests * positions), positions)
    layer = np.asarray(meta.moe_layers)
    rows = {
        "request": np.repeat(request, layer.size * meta.top_k),
        "position": np.repeat(position, layer.size * meta.top_k),
        "phase": np.where(np.repeat(position, layer.size * meta.top_k) < prompt_tokens, "prefill", "decode"),
        "layer": np.tile(np.repeat(layer, meta.top_k), len(token)),
        "rank": np.tile(np.arange(meta.top_k), len(token) * layer.size),
        "expert": experts[token].reshape(-1),
        "weight": weights[token].reshape(-1),
    }
    return ReplayInput.from_trace(Trace(meta, pd.DataFrame(rows)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", type=Path, help="results JSON of `expertcache bench --out`")
    parser.add_argument("--trace", type=Path, required=True, help="the trace the bench was given with --trace")
    shape = "the bench's, for results that name their setup (benches after session 10)"
    parser.add_argument("--requests", type=int, help=f"[default: {shape}]")
    parser.add_argument("--prompt-tokens", type=int, help=f"[default: {shape}]")
    parser.add_argument("--new-tokens", type=int, help=f"[default: {shape}]")
    parser.add_argument("--set", dest="term", required=True,
                        help="NAME=V1,V2,...: a Profile field and the values to price it at (dense_ms: its decode, one-token point)")  # fmt: skip
    args = parser.parse_args()
    name, _, values = args.term.partition("=")
    if name not in {f.name for f in dataclasses.fields(Profile)} or not values:
        parser.error(f"--set {args.term}: give NAME=V1,V2 with NAME a Profile field")
    result = json.loads(args.bench.read_text())
    if not result.get("trace"):
        parser.error(f"{args.bench} ran its model's own routers: there is no forced routing to rebuild")
    setup = result.get("setup", {})
    requests, prompt_tokens, new_tokens = (getattr(args, key) or setup.get(key) for key in ("requests", "prompt_tokens", "new_tokens"))
    if not (requests and prompt_tokens and new_tokens):
        parser.error(f"{args.bench} does not name its setup: give --requests, --prompt-tokens and --new-tokens as the bench had them")
    profile = Profile(**result["profile"])
    replay = forced_routing(read_trace(args.trace), requests, prompt_tokens, new_tokens)
    rows = [row for row in result["rows"] if "predicted_tokens_per_s" in row and row["predicted_tokens_per_s"] is not None]
    print(f"{args.bench.name}: {result['machine']}; measured decode tok/s, the bench's prediction, this one's")
    for value in (float(v) for v in values.split(",")):
        priced = priced_at(profile, name, value)
        print(f"{name} = {value:g}")
        peers: dict[str, float] = {}
        for row in rows:
            geometry = Geometry(row["sets"], row["ways"])
            predicted = simulate(replay, geometry, row["policy"], priced, row["threads"], placement=row["placement"], keep_outcome=True)
            error = predicted.tokens_per_s / row["decode_tokens_per_s"] - 1
            # at the CPU measured after the run, as the bench prices it (benches from session 17 on)
            at_run = priced.with_cpu_at(row["threads"], row["cpu_expert_ms_after"]) if "cpu_expert_ms_after" in row else priced
            bound = roofline(replay, predicted.outcome, at_run, row["threads"]).tokens_per_s
            detail = f"  roofline {bound:.2f} ({row['decode_tokens_per_s'] / bound:.0%} of it)"
            if row["placement"] == "cache":
                detail += f"  splits: ran {row['measured'].get('split', '?')}, here {predicted.split}"
            print(f"  {row['system']:<12} measured {row['decode_tokens_per_s']:6.2f}  bench {row['predicted_tokens_per_s']:6.2f}"
                  f"  here {predicted.tokens_per_s:6.2f} ({error:+.1%}){detail}")  # fmt: skip
            peers[row["system"]] = predicted.tokens_per_s
        ours = next(row for row in rows if row["placement"] == "cache")
        swept = runnable_candidates(ours["sets"] * ours["ways"], replay.meta.top_k, [ours["threads"]])
        speeds = [simulate(replay, Geometry(c.sets, c.ways), c.policy, priced, c.threads).tokens_per_s for c in swept]
        best = swept[int(np.argmax(speeds))]
        speed = max(speeds)
        ratios = ", ".join(f"{speed / tok_s:.2f}x {system}" for system, tok_s in peers.items() if system != "expertcache")
        print(f"  the sweep's choice here: {best.policy} {best.sets} x {best.ways}, {speed:.2f} tok/s: {ratios}")


if __name__ == "__main__":
    main()
