"""Splitting lone misses on and off, interleaved in one process, with the split's parts timed.

The same `eta` N × 1 cache on a shortened full-size shape (trace-forced routing, or the
synthesized routers without ``--trace``), run with the profile's splits allowed and with them
turned off (``split_min_gpu_share=0``), alternately, for a few rounds (round 0 is a warm-up of one
request). Host-side time of every expert computation is recorded by wrapping the runtime's
functions: whole experts on the CPU and the GPU, the split's units on each side, and a whole split
miss from its first copy to its last queued kernel. ``--drained`` adds a third run per round with
splits, in which the host waits for the GPU (copies included) before each CPU share, outside its
timing: it tells whether a CPU share is slowed by what the GPU and the link do meanwhile.

    python benchmarks/split_ab_gpu.py --trace .device/traces/mixtral-gsm8k.parquet --layers 8 --slots 14 --out split-ab.json
    python benchmarks/split_ab_gpu.py --shape phi-3.5-moe --layers 8 --slots 33 --drained --out split-ab-phi.json
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from dataclasses import replace

import torch

from expertcache.runtime import offload
from expertcache.runtime.synthetic import build_full_size
from expertcache.simulator.costs import load_profile
from expertcache.traces.io import read_trace
from eta_rounds import add_round_options, eta_cache, keep_row, run_round

TIMES: dict[str, list[float]] = defaultdict(list)
DRAIN = False  # wait for the GPU before each CPU computation (outside its timing)


def timed(name: str, function):
    """``function``, its host time appended under ``name.cpu`` or ``name.gpu`` by its tensors' device."""

    def wrapper(*args, **kwargs):
        side = "cpu" if any(isinstance(a, torch.Tensor) and a.device.type == "cpu" for a in args) else "gpu"
        if side == "cpu" and DRAIN:
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = function(*args, **kwargs)
        TIMES[f"{name}.{side}"].append(time.perf_counter() - started)
        return out

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_round_options(parser)
    parser.add_argument("--trace", help="Force the routing from this trace; default: the synthesized routers.")
    parser.add_argument("--drained", action="store_true", help="Also run splits with the GPU drained before each CPU share.")
    args = parser.parse_args()

    global DRAIN
    model, host, top_k = build_full_size(args.shape, args.layers, device="cuda")
    trace = read_trace(args.trace) if args.trace else None
    profile = load_profile("h100")
    offload.units_out = timed("units", offload.units_out)
    offload.expert_ffn = timed("whole", offload.expert_ffn)
    run_split = offload.CachedExperts._run_split

    def timed_split(self, *split_args):
        started = time.perf_counter()
        run_split(self, *split_args)
        TIMES["split_total"].append(time.perf_counter() - started)

    offload.CachedExperts._run_split = timed_split
    prompts = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    rows = []
    for round_ in range(args.rounds + 1):
        for split, DRAIN in ((True, False), (False, False)) + (((True, True),) if args.drained else ()):
            TIMES.clear()
            costs = replace(profile, split_min_gpu_share=profile.split_min_gpu_share if split else 0.0)
            stats = run_round(model, host, top_k, eta_cache(args.slots), args.threads, costs, trace, prompts, args.new_tokens, warm_up=round_ == 0)
            keep_row(rows, {"round": round_, "split": split, "drained": DRAIN, "tok_s": stats["decode_tokens_per_s"], "splits": stats["split"],
                            "cpu_experts": stats["cpu_experts"], "fetched": stats["fetched"], "copy_wait_s": stats["copy_wait_s"],
                            "ms": {name: (len(t), 1e3 * sum(t) / len(t)) for name, t in TIMES.items()}}, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
