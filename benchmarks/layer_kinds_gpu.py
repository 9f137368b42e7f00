"""Where a split-heavy run loses time: decode layers by kind, measured against their price, under three variants.

Mixtral bench run 12 and fidelity run 14 ran split-heavy configurations 12–15 % below their
prediction, and the runtime's totals (CPU time, copy waits) do not say where. This calibrates a
shortened full-size shape, then runs the same `eta` N × 1 cache (trace-forced routing) under three
variants, alternately, for a few rounds (round 0 is a warm-up of one request):

- ``as-is``: the runtime as it is;
- ``pinned-results``: each CPU result is staged in pinned memory before its copy to the GPU (from
  pageable memory the driver may first wait for the compute stream, which holds the layer's copy
  waits; the runtime's ``output_queue_s`` times that wait);
- ``no-splits``: the same profile with splits turned off (``split_min_gpu_share=0``).

Each row has the runtime's decode layers by kind (hits only, GPU, CPU, both, split): count, measured
and priced milliseconds from a layer's routing to the next one's, the host's part of it in the
experts function, and the host's time queueing CPU results. ``--device cpu`` runs it without a GPU, as a smoke test (the second command: 46 s on the
2-core dev box, 6 GB of host memory).

    python benchmarks/layer_kinds_gpu.py --trace .device/traces/mixtral-gsm8k.parquet --out layer-kinds.json
    python benchmarks/layer_kinds_gpu.py --trace .device/traces/mixtral-gsm8k.parquet --out /tmp/lk.json --device cpu \
        --layers 2 --slots 3 --threads 2 --rounds 1 --new-tokens 4
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace

from expertcache.runtime.cpu_threads import keep_cpu_threads_spinning

keep_cpu_threads_spinning()  # before torch loads OpenMP, as the CLI's model commands do

import torch

from expertcache.runtime.calibrate import calibrate
from expertcache.runtime.loader import attach
from expertcache.runtime.offload import CachedExperts, LayerPass
from expertcache.runtime.synthetic import build_full_size
from expertcache.simulator.config import CacheConfig
from expertcache.traces.io import read_trace
from eta_rounds import add_round_options, eta_cache, keep_row, run_round

VARIANTS = ("as-is", "pinned-results", "no-splits")


@contextmanager
def pinned_results() -> Iterator[None]:
    """CPU results copied to the GPU from pinned memory (the caching host allocator keeps each block
    until its copy is done), for a while."""
    as_is = CachedExperts._to_device

    def from_pinned(self: CachedExperts, record: LayerPass, cpu_result: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        staged = torch.empty(cpu_result.shape, dtype=cpu_result.dtype, pin_memory=self.device.type == "cuda")
        on_device = staged.copy_(cpu_result).to(self.device, non_blocking=True)
        record.output_queue_s += time.perf_counter() - started
        return on_device

    CachedExperts._to_device = from_pinned
    try:
        yield
    finally:
        CachedExperts._to_device = as_is


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_round_options(parser)
    parser.add_argument("--trace", required=True)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()

    device = torch.device(args.device)
    model, host, top_k = build_full_size(args.shape, args.layers, device=args.device)
    attach(model, host, CacheConfig(sets=1, ways=top_k), device, args.threads, None, top_k)
    profile = calibrate(model, name="layer-kinds", threads=[args.threads], progress=lambda m: print("calibrating", m, flush=True))
    del model.expertcache
    print({k: v for k, v in profile.__dict__.items() if k != "notes"}, flush=True)
    trace = read_trace(args.trace)
    prompts = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    rows = []
    for round_ in range(args.rounds + 1):
        for variant in VARIANTS:
            costs = replace(profile, split_min_gpu_share=0.0) if variant == "no-splits" else profile
            with pinned_results() if variant == "pinned-results" else nullcontext():
                stats = run_round(model, host, top_k, eta_cache(args.slots), args.threads, costs, trace, prompts, args.new_tokens,
                                  warm_up=round_ == 0, device=device)  # fmt: skip
            by_kind = {kind: {"layers": k["layers"], "ms": 1e3 * k["wall_s"] / k["layers"], "priced_ms": 1e3 * k["planned_s"] / k["layers"],
                              "host_ms": 1e3 * k["host_s"] / k["layers"]} for kind, k in stats["layers_by_kind"].items()}  # fmt: skip
            keep_row(rows, {"round": round_, "variant": variant, "tok_s": stats["decode_tokens_per_s"], "splits": stats["split"],
                            "cpu_experts": stats["cpu_experts"], "fetched": stats["fetched"], "copy_wait_s": stats["copy_wait_s"],
                            "output_queue_s": stats["output_queue_s"], "layers_by_kind": by_kind}, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
