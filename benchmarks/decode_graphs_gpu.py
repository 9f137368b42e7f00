"""Decode with and without CUDA graphs, side by side on one model: tokens/s, the time of a layer
whose experts all hit, what capturing cost, and whether the tokens are the same.

``runtime.graphs`` replays the work between a decode step's experts from CUDA graphs. This
builds a full-size architecture's first layers with synthesized weights and generates the same
prompt under both, the two taking turns for ``--rounds``, with two caches: one holding every
expert (each layer's time is then its dense work and its resident experts) and one holding a
quarter of them (misses computed on the CPU or copied, by the usual rule).

    python benchmarks/decode_graphs_gpu.py --out decode-graphs.json

``--device cpu --layers 1 --tokens 4 --rounds 1`` runs it without a GPU (graphs off on both
sides there), as a smoke test.
"""

from __future__ import annotations

import argparse
import json
import statistics

from expertcache.runtime.cpu_threads import keep_cpu_threads_spinning

keep_cpu_threads_spinning()

import torch  # noqa: E402

from expertcache.runtime.loader import attach  # noqa: E402
from expertcache.runtime.synthetic import build_full_size  # noqa: E402
from expertcache.simulator.config import CacheConfig  # noqa: E402


def run(model, host, top_k, slots: int, graphs: bool, prompt: torch.Tensor, tokens: int, threads: int) -> dict:
    """One generation under a fresh runtime; its speed, its all-hit layers' time and its tokens."""
    device = prompt.device
    attach(model, host, CacheConfig(sets=1, ways=slots, policy="lru"), device, threads, None, top_k, cuda_graphs=graphs)
    runtime = model.expertcache
    replayed = runtime.graphs  # the model's: what earlier runs captured, this one replays
    captured_before = (replayed.captures, replayed.capture_s) if replayed else (0, 0.0)
    runtime.begin_request(0)
    with torch.inference_mode():
        out = model.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    runtime.end_pass()
    runtime.drain()
    stats = runtime.stats
    hits = stats.layer_times.get("hits")
    row = {
        "graphs": graphs, "slots": slots, "decode_tokens_per_s": stats.decode_tokens_per_s, "hit_rate": stats.hit_rate,
        "hits_layer_ms": 1e3 * hits.wall_s / hits.layers if hits else None,
        "hits_layer_host_ms": 1e3 * hits.host_s / hits.layers if hits else None,
        "layers_by_kind": {kind: times.describe() for kind, times in sorted(stats.layer_times.items())},
        "captures": replayed.captures - captured_before[0] if replayed else 0,
        "capture_s": replayed.capture_s - captured_before[1] if replayed else 0.0,
        "graphs_failed": bool(replayed and replayed.failed),
        "tokens": out[0, prompt.shape[1]:].tolist(),
    }  # fmt: skip
    del model.expertcache, runtime
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="mixtral-8x7b")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers built")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per generation")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=15)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out")
    args = parser.parse_args()
    model, host, top_k = build_full_size(args.shape, args.layers, device=args.device)
    num_experts = next(iter(host.values())).shape[0]
    every = len(host) * num_experts
    prompt = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0)).to(args.device)
    machine = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    rows = []
    for round_ in range(args.rounds):
        for slots in (every, max(top_k, every // 4)):
            for graphs in (False, True):
                row = run(model, host, top_k, slots, graphs, prompt, args.tokens, args.threads) | {"round": round_}
                rows.append(row)
                print(f"round {round_}, {slots} slots, graphs {'on ' if graphs else 'off'}: {row['decode_tokens_per_s']:.2f} tok/s, "
                      f"all-hit layer {row['hits_layer_ms'] or float('nan'):.2f} ms (host {row['hits_layer_host_ms'] or float('nan'):.2f}), "
                      f"{row['captures']} captures in {row['capture_s']:.2f} s{', FAILED' if row['graphs_failed'] else ''}; {row['layers_by_kind']}")  # fmt: skip
    summary = []
    for slots in sorted({row["slots"] for row in rows}, reverse=True):
        eager = [row for row in rows if row["slots"] == slots and not row["graphs"]]
        graphed = [row for row in rows if row["slots"] == slots and row["graphs"]]
        same = all(a["tokens"] == b["tokens"] for a, b in zip(eager, graphed))
        # a control: with misses, where each expert runs follows the host's timing, and the CPU and
        # the GPU round differently, so two eager runs need not agree either
        eager_agree = all(row["tokens"] == eager[0]["tokens"] for row in eager)
        ratio = statistics.median(b["decode_tokens_per_s"] / a["decode_tokens_per_s"] for a, b in zip(eager, graphed))
        summary.append({"slots": slots, "speedup": ratio, "same_tokens": same, "eager_runs_agree": eager_agree})
        print(f"{slots} slots: graphs {ratio:.2f}x eager (median of rounds), same tokens as eager: {same} (eager runs among themselves: {eager_agree})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": f"{machine}, torch {torch.__version__}", "args": vars(args), "rows": rows, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
