"""When the link really finished each layer's copies, against when the runtime expected it to.

    python benchmarks/link_timeline_gpu.py --trace .device/traces/mixtral-gsm8k.parquet --out link-timeline.json

In the session-18 and session-19 benches, layers that copy ran longer than their price. After the
host was done with them they waited for the GPU 0.5-1.1 ms longer than all-hit layers did. Each
layer's placement counts on an estimate of when the link is free (``CachedExperts._link_free_at``,
priced at the profile's bandwidth, slowed while the CPU computes). This times every copy on the copy
stream (CUDA events around ``SlotPool.fill``) on a shortened full-size shape, calibrated first, with
routing forced from a trace. It then reports:

- each copy's bandwidth, whole experts apart from a split's slices;
- how long the link stood idle between the copies of a layer;
- how far each layer's last copy landed after the runtime's estimate (``late``), by the layer's kind;
- how long after the layer was placed the host started its first copy (the rule starts the link there).

A copy's time includes any wait for the kernels still reading its slot.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

from expertcache.runtime.cpu_threads import keep_cpu_threads_spinning

keep_cpu_threads_spinning()

import torch  # noqa: E402

from eta_rounds import keep_row, run_round  # noqa: E402
from expertcache.runtime.calibrate import calibrate  # noqa: E402
from expertcache.runtime.loader import attach  # noqa: E402
from expertcache.runtime.offload import CachedExperts  # noqa: E402
from expertcache.runtime.synthetic import build_full_size  # noqa: E402
from expertcache.simulator.config import CacheConfig  # noqa: E402
from expertcache.traces.io import read_trace  # noqa: E402


class LinkTimeline:
    """Every copy of one runtime timed on its copy stream, grouped by the decode layer that planned it."""

    def __init__(self, runtime: CachedExperts) -> None:
        self.layers: list[dict] = []  # per planned decode layer: kind, the estimate, its copies
        pool, plan = runtime.pool, runtime._plan
        fill = pool.fill
        torch.cuda.synchronize()
        self.reference = torch.cuda.Event(enable_timing=True)
        self.reference.record(pool.copy_stream)
        self.reference_s = time.perf_counter()  # the idle device records the reference at once

        def timed_fill(slot, host_row, ranges=None):
            issued = time.perf_counter()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(pool.copy_stream)
            landed = fill(slot, host_row, ranges)
            end.record(pool.copy_stream)
            spans = ranges if ranges is not None else [(0, host_row.numel())]
            if self.layers and self.layers[-1]["decode"]:
                layer = self.layers[-1]
                layer.setdefault("issued_s", issued)
                layer["copies"].append((start, end, sum(b - a for a, b in spans) * host_row.element_size(), ranges is None))
            return landed

        def observed_plan(*args):
            result = plan(*args)
            self.layers.append({"kind": result.kind, "expected_s": runtime._link_free_at, "placed_s": time.perf_counter(), "copies": [],
                                "decode": runtime._pass_is_decode})  # fmt: skip
            return result

        pool.fill, runtime._plan = timed_fill, observed_plan

    def _host_s(self, event: torch.cuda.Event) -> float:
        return self.reference_s + self.reference.elapsed_time(event) / 1e3

    def summary(self) -> dict:
        """Bandwidths, idle gaps and lateness, once the device is idle."""
        torch.cuda.synchronize()
        whole, sliced, idle, late, issue = [], [], [], {}, {}
        for layer in self.layers:
            copies = layer["copies"]  # none outside decode
            if not copies:
                continue
            for i, (start, end, nbytes, is_whole) in enumerate(copies):
                (whole if is_whole else sliced).append(nbytes / (start.elapsed_time(end) / 1e3) / 1e9)
                if i:
                    idle.append(max(0.0, copies[i - 1][1].elapsed_time(start)))
            late.setdefault(layer["kind"], []).append(1e3 * (self._host_s(copies[-1][1]) - layer["expected_s"]))
            issue.setdefault(layer["kind"], []).append(1e3 * (layer["issued_s"] - layer["placed_s"]))
        return {
            "whole_expert_gbps": _quartiles(whole), "slices_gbps": _quartiles(sliced), "idle_ms_between_copies": _quartiles(idle),
            "late_ms_by_kind": {kind: {"layers": len(values), **_quartiles(values)} for kind, values in late.items()},
            "first_copy_issued_ms_by_kind": {kind: _quartiles(values) for kind, values in issue.items()},
        }  # fmt: skip


def _quartiles(values: list[float]) -> dict:
    if len(values) < 2:
        return {"count": len(values)}
    q1, median, q3 = statistics.quantiles(values, n=4)
    return {"count": len(values), "q1": round(q1, 3), "median": round(median, 3), "q3": round(q3, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="mixtral-8x7b")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--slots", type=int, default=16, help="Sets of one way each.")
    parser.add_argument("--policies", default="eta,lru")
    parser.add_argument("--threads", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--trace", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    model, host, top_k = build_full_size(args.shape, args.layers, device="cuda")
    attach(model, host, CacheConfig(sets=1, ways=2), torch.device("cuda"), args.threads, None, top_k)
    profile = calibrate(model, threads=[args.threads])
    print(json.dumps({"h2d_gbps": profile.h2d_gbps, "copy_slowdown_during_cpu": profile.copy_slowdown_during_cpu}), flush=True)
    trace = read_trace(args.trace)
    prompts = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    rows: list[dict] = []
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for policy in args.policies.split(","):
            timelines = []
            config = CacheConfig(sets=args.slots, ways=1, policy=policy)
            stats = run_round(model, host, top_k, config, args.threads, profile, trace, prompts, args.new_tokens, round_ == 0,
                              adjust=lambda runtime: timelines.append(LinkTimeline(runtime)))  # fmt: skip
            summary = timelines[0].summary()
            timelines.clear()  # its hooks hold the runtime, and with it a slot pool
            gc.collect()
            if round_:
                keep_row(rows, {"round": round_, "policy": policy, "tok_s": stats["decode_tokens_per_s"], "profile_h2d_gbps": profile.h2d_gbps,
                                "copy_slowdown_during_cpu": profile.copy_slowdown_during_cpu, **summary}, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
