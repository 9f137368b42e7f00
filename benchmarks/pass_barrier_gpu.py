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

import torch

from expertcache.runtime.synthetic import build_full_size
from expertcache.simulator.costs import load_profile
from expertcache.traces.io import read_trace
from eta_rounds import add_round_options, eta_cache, keep_row, run_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_round_options(parser)
    parser.add_argument("--trace", required=True)
    args = parser.parse_args()

    model, host, top_k = build_full_size(args.shape, args.layers, device="cuda")
    trace = read_trace(args.trace)
    profile = load_profile("h100")
    prompts = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    rows = []
    for round_ in range(args.rounds + 1):
        for barrier in (False, True):
            # the old barrier: the pass's wall time is read at the next pass's start, after this wait
            hook = model.register_forward_hook(lambda *_: torch.cuda.synchronize()) if barrier else None
            stats = run_round(model, host, top_k, eta_cache(args.slots), args.threads, profile, trace, prompts, args.new_tokens, warm_up=round_ == 0)
            if hook is not None:
                hook.remove()
            keep_row(rows, {"round": round_, "device_wide_wait": barrier, "tok_s": stats["decode_tokens_per_s"], "copies": stats["copies"],
                            "splits": stats["split"], "cpu_experts": stats["cpu_experts"], "copy_wait_s": stats["copy_wait_s"]}, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
