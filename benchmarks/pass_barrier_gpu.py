"""A pass ending with its compute stream against one ending with a device-wide wait, interleaved in one process.

Until session 8 the runtime closed every forward pass with ``torch.cuda.synchronize()``, which
also waited for the copies still on the link (refills of kept misses computed on the CPU, the rest
of a kept split expert), so every token drained the link; the simulator lets those copies run on
into the next pass. This runs the same `eta` N × 1 cache on a shortened full-size shape with
trace-forced routing, once as the runtime now is and once with a device-wide wait after each
forward pass (the old barrier, timed inside the pass as it was), alternately for a few rounds
(round 0 is a warm-up):

    OMP_WAIT_POLICY=ACTIVE python benchmarks/pass_barrier_gpu.py --trace .device/traces/mixtral-gsm8k.parquet --out pass-barrier.json
"""

from __future__ import annotations

import argparse
import json

import torch

from expertcache.runtime.forced import TraceRouting
from expertcache.runtime.loader import attach
from expertcache.runtime.synthetic import build_full_size
from expertcache.simulator.config import CacheConfig
from expertcache.simulator.costs import load_profile
from expertcache.traces.io import read_trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="mixtral-8x7b")
    parser.add_argument("--trace", required=True)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--slots", type=int, default=14)
    parser.add_argument("--threads", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2, help="Measured rounds after the warm-up round.")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    model, host, top_k = build_full_size(args.shape, args.layers, device="cuda")
    trace = read_trace(args.trace)
    profile = load_profile("h100")
    prompts = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    rows = []
    for round_ in range(args.rounds + 1):
        for barrier in (False, True):
            attach(model, host, CacheConfig(sets=args.slots, ways=1, policy="eta"), torch.device("cuda"), args.threads, profile, top_k)
            runtime = model.expertcache
            runtime.routing = TraceRouting(trace, runtime.moe_layers, runtime.num_experts, top_k)
            # the old barrier: the pass's wall time is read at the next pass's start, after this wait
            hook = model.register_forward_hook(lambda *_: torch.cuda.synchronize()) if barrier else None
            for request in range(2 if round_ else 1):
                runtime.begin_request(request)
                with torch.inference_mode():
                    model.generate(prompts[request : request + 1].cuda(), max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
                runtime.end_pass()
            runtime.drain()
            if hook is not None:
                hook.remove()
            stats = runtime.stats.summary()
            row = {"round": round_, "device_wide_wait": barrier, "tok_s": stats["decode_tokens_per_s"], "copies": stats["copies"],
                   "splits": stats["split"], "cpu_experts": stats["cpu_experts"], "copy_wait_s": stats["copy_wait_s"]}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
            del runtime, model.expertcache
    with open(args.out, "w") as handle:
        json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
