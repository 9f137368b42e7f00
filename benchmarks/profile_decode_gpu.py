"""Where the host's time goes in a decode step: cProfile of the runtime on a shortened full-size shape.

Decode is host-bound between expert computations: the host waits once per layer for the routing,
then plans and queues the layer. This profiles that host time on a few layers of a full-size
architecture with synthesized weights and trace-forced routing, per placement:

    python benchmarks/profile_decode_gpu.py --trace .device/traces/mixtral-gsm8k.parquet --out profile-decode.txt
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch
from torch.profiler import ProfilerActivity

from expertcache.runtime.experts import expert_ffn
from expertcache.runtime.forced import TraceRouting
from expertcache.runtime.loader import attach
from expertcache.runtime.synthetic import build_full_size
from expertcache.simulator.config import CacheConfig
from expertcache.traces.io import read_trace


def _cpu_expert_ms(model, runtime, host, repeats: int = 20) -> float:
    """One-token CPU expert, cycling through the experts of every layer as decode does."""
    hidden = torch.randn(1, model.config.hidden_size, dtype=runtime.layout.dtype)
    rows = [row for layer in runtime.moe_layers for row in host[layer]]
    module = runtime.layers[runtime.moe_layers[0]]
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        expert_ffn(module, hidden, runtime.layout.views(rows[(7 * i) % len(rows)]))
        times.append(time.perf_counter() - started)
    return 1e3 * sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="mixtral-8x7b")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--trace", required=True)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--threads", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--placements", default="cache,cpu")
    parser.add_argument("--out")
    parser.add_argument("--timeline-dir", help="Write a Chrome trace of 4 decode tokens per placement here.")
    args = parser.parse_args()
    model, host, top_k = build_full_size(args.shape, args.layers, device="cuda")
    torch.set_num_threads(args.threads)
    report = io.StringIO()
    for placement in args.placements.split(","):
        attach(model, host, CacheConfig(sets=1, ways=args.slots, policy="markov"), torch.device("cuda"), args.threads, None, top_k, placement=placement)
        runtime = model.expertcache
        runtime.routing = TraceRouting(read_trace(args.trace), runtime.moe_layers, runtime.num_experts, top_k)
        prompt = torch.zeros(1, 8, dtype=torch.long, device="cuda")

        def generate(tokens: int) -> None:
            runtime.begin_request(0)
            with torch.inference_mode():
                model.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            runtime.end_pass()

        generate(args.tokens)  # warm-up over the same lengths: SDPA's cuDNN backend builds a graph per new length
        torch.cuda.synchronize()
        started = time.perf_counter()
        generate(args.tokens)
        report.write(f"\n## {placement}: {1e3 * (time.perf_counter() - started) / args.tokens:.1f} ms per decode token unprofiled (prefill included)\n")
        before = runtime.stats.decode_s, runtime.stats.decode_tokens
        started = time.perf_counter()
        profiler = cProfile.Profile()
        profiler.runcall(generate, args.tokens)
        wall = time.perf_counter() - started
        stats = runtime.stats
        per_token = (stats.decode_s - before[0]) / (stats.decode_tokens - before[1])
        report.write(f"\n## {placement}: {per_token * 1e3:.1f} ms per decode token under cProfile ({wall:.1f} s wall), "
                     f"{args.layers} layers, hit rate {stats.hit_rate:.1%}, {stats.summary()}\n")  # fmt: skip
        pstats.Stats(profiler, stream=report).sort_stats("tottime").print_stats(25)
        with torch.profiler.profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as timeline:
            generate(4)
        report.write(timeline.key_averages().table(sort_by="self_cuda_time_total", row_limit=12))
        report.write(timeline.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
        if args.timeline_dir:
            timeline.export_chrome_trace(f"{args.timeline_dir}/timeline-{placement}.json")
        report.write(f"\nCPU expert alone, same process: {_cpu_expert_ms(model, runtime, host):.2f} ms\n")
        del model.expertcache
    print(report.getvalue())
    if args.out:
        with open(args.out, "w") as f:
            f.write(report.getvalue())


if __name__ == "__main__":
    main()
