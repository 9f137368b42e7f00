"""Live runtime on a GPU: a full-size architecture with synthesized weights and trace-forced
routing, expertcache configurations against every expert on the CPU, in one run.

    python benchmarks/runtime_gpu.py --shape mixtral-8x7b --budget 24GiB \
        --trace .device/traces/mixtral-gsm8k.parquet --systems eta,lru:14x4,cpu --out result.json

Each system generates the same requests (random prompt ids; routing forced from the trace);
printed: decode tokens/s, hit rate, time breakdown, and each system's speed over all-on-CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from expertcache.runtime.forced import TraceRouting
from expertcache.runtime.loader import attach, default_config, plan_memory
from expertcache.runtime.synthetic import build_full_size, full_size_config
from expertcache.simulator.config import CacheConfig
from expertcache.traces.io import read_trace
from expertcache.units import parse_bytes


def system_config(spec: str, plan) -> tuple[CacheConfig, str]:
    """``cpu`` | ``static`` | ``[fetch:]POLICY`` (largest geometry) | ``[fetch:]POLICY:NxM``."""
    if spec in ("cpu", "static"):
        return default_config(plan), spec
    placement = "cache"
    if spec.startswith("fetch:"):
        placement, spec = "fetch", spec.removeprefix("fetch:")
    policy, _, geometry = spec.partition(":")
    if not geometry:
        return default_config(plan, policy), placement
    sets, ways = (int(x) for x in geometry.split("x"))
    return CacheConfig(sets=sets, ways=ways, policy=policy, budget_bytes=plan.budget_bytes), placement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="mixtral-8x7b")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--budget", default="24GiB")
    parser.add_argument("--trace", required=True)
    parser.add_argument("--systems", default="eta,lru:14x4,cpu")
    parser.add_argument("--requests", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--out")
    args = parser.parse_args()

    started = time.perf_counter()
    model, host, top_k = build_full_size(args.shape, args.layers, device="cuda")
    built_s = time.perf_counter() - started
    plan = plan_memory(full_size_config(args.shape, args.layers), parse_bytes(args.budget), args.prompt_tokens + args.new_tokens + 8, torch.bfloat16)
    plan.check()
    trace = read_trace(args.trace)
    torch.set_num_threads(args.threads)
    prompts = torch.randint(0, model.config.vocab_size, (args.requests, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    machine = f"{torch.cuda.get_device_name()}, {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"built {args.shape} ({len(host)} MoE layers) in {built_s:.0f} s; {plan.slots} slots fit {args.budget}; {machine}", flush=True)

    rows = []
    for spec in args.systems.split(","):
        config, placement = system_config(spec, plan)
        attach(model, host, config, torch.device("cuda"), args.threads, "h100", top_k, placement=placement)
        runtime = model.expertcache
        runtime.routing = TraceRouting(trace, runtime.moe_layers, runtime.num_experts, top_k)
        for request in range(args.requests):
            runtime.begin_request(request)
            with torch.inference_mode():
                model.generate(prompts[request : request + 1].cuda(), max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
            runtime.end_pass()
        stats = runtime.stats
        row = {"system": spec, "placement": placement, "sets": config.sets, "ways": config.ways,
               "policy": config.policy, "threads": args.threads, **stats.summary(),
               "trace": os.path.basename(args.trace), "shape": args.shape, "layers": len(host), "budget": args.budget,
               "machine": machine}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
        del runtime, model.expertcache
        torch.cuda.empty_cache()

    baseline = next((r for r in rows if r["placement"] == "cpu"), None)
    print("\n| system | slots | decode tok/s | hit rate | vs all-on-CPU | CPU expert s | GPU expert s | copy waits |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["decode_tokens_per_s"] / baseline["decode_tokens_per_s"] if baseline else float("nan")
        slots = "-" if r["placement"] == "cpu" else f"{r['sets']}x{r['ways']}"
        print(f"| {r['system']} | {slots} | {r['decode_tokens_per_s']:.2f} | {r['hit_rate']:.1%} | {ratio:.2f}x | "
              f"{r['cpu_expert_s']:.1f} | {r['gpu_expert_s']:.1f} | {r['copy_waits']} ({r['copy_wait_s']:.2f} s) |")  # fmt: skip
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
