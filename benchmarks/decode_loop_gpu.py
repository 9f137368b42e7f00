"""What ``generate``'s own loop and a recording cost a decode token, against bare forward passes.

``generate`` does per step, besides the forward pass: logits to float32, its logits processors,
the stopping criteria (a check that synchronises with the GPU), the next inputs (a longer
attention mask, positions). This times, in alternating rounds on one model, the attached model's
``generate`` (into its one static cache) and a loop of bare forward passes feeding each step's
argmax to the next. A variant may add ``+record`` (a Recorder writing each pass as it closes, as
``expertcache record`` does) or ``+deferred`` (one writing at close, as the bench's do). Per round:
decode ms per token as the runtime counts it (from one decode pass's start to the next's), the part
of it outside the MoE layers' timed spans (the last MoE layer of a pass is not timed), and the wall
clock per decode token.

    python benchmarks/decode_loop_gpu.py --shape olmoe-1b-7b --sets 9 --ways 25 --out F
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from expertcache.runtime.cpu_threads import keep_cpu_threads_spinning

keep_cpu_threads_spinning()  # before torch loads OpenMP, as the CLI's model commands do

import torch  # noqa: E402

from expertcache.runtime.kv import CACHE_ARGUMENT, empty_cache  # noqa: E402
from expertcache.runtime.loader import attach  # noqa: E402
from expertcache.runtime.record import Recorder  # noqa: E402
from expertcache.runtime.synthetic import build_full_size  # noqa: E402
from expertcache.simulator.config import CacheConfig  # noqa: E402


def bare_loop(model, ids: torch.Tensor, new_tokens: int) -> None:
    """Greedy decoding as forward passes only: each step's argmax stays on the GPU as the next input."""
    cache = empty_cache(model, ids.shape[1] + new_tokens)
    logits = model(ids, **{CACHE_ARGUMENT: cache}, use_cache=True, logits_to_keep=1).logits
    for _ in range(new_tokens - 1):
        token = logits[:, -1].argmax(-1, keepdim=True)
        logits = model(token, **{CACHE_ARGUMENT: cache}, use_cache=True, logits_to_keep=1).logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="olmoe-1b-7b")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--sets", type=int, default=1)
    parser.add_argument("--ways", type=int, required=True)
    parser.add_argument("--policy", default="lru")
    parser.add_argument("--placement", default="cache")
    parser.add_argument("--threads", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="generate,bare,generate+record,generate+deferred",
                        help="Comma-separated loops (generate, bare), each optionally +record or +deferred (a Recorder attached).")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke test of this script")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    model, host, top_k = build_full_size(args.shape, args.layers, device=args.device)
    device = torch.device(args.device)
    config = CacheConfig(sets=args.sets, ways=args.ways, policy=args.policy)
    attach(model, host, config, device, args.threads, None, top_k, placement=args.placement)
    runtime = model.expertcache
    ids = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0)).to(device)
    steps = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens, "do_sample": False}
    loops = {
        "generate": lambda: model.generate(ids, **steps),
        "bare": lambda: bare_loop(model, ids, args.tokens),
    }
    variants = args.variants.split(",")
    rows = []
    workdir = tempfile.mkdtemp()

    def run(variant: str, request: int) -> dict:
        loop, *options = variant.split("+")
        recording = "record" in options or "deferred" in options
        runtime.recorder = Recorder(f"{workdir}/{request}.parquet", runtime, "decode-loop", deferred="deferred" in options) if recording else None
        stats = runtime.stats
        before_s, before_tokens, before_layers, before_prefill = stats.decode_s, stats.decode_tokens, _layer_wall_s(runtime), stats.prefill_s
        started = time.perf_counter()
        runtime.begin_request(request)
        loops[loop]()
        runtime.end_pass()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - started
        if runtime.recorder is not None:
            runtime.recorder.close()
            runtime.recorder = None
        tokens = stats.decode_tokens - before_tokens
        per_token = 1e3 * (stats.decode_s - before_s) / tokens
        return {"variant": variant, "decode_ms_per_token": round(per_token, 3),
                "outside_timed_layers_ms": round(per_token - 1e3 * (_layer_wall_s(runtime) - before_layers) / tokens, 3),
                "wall_ms_per_token": round(1e3 * (wall - (stats.prefill_s - before_prefill)) / tokens, 3)}  # fmt: skip

    with torch.inference_mode():
        for variant in variants:  # warm-up: graphs captured, first shapes met
            run(variant, 0)
        for round_ in range(args.rounds):
            for variant in variants:
                row = {"round": round_, **run(variant, round_ + 1)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    summary = {v: {k: statistics.median(r[k] for r in rows if r["variant"] == v) for k in ("decode_ms_per_token", "wall_ms_per_token")} for v in variants}
    print(json.dumps({"median_ms_per_token": summary}))
    with open(args.out, "w") as f:
        json.dump({"machine": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "args": vars(args), "rows": rows, "median_ms_per_token": summary}, f, indent=1)


def _layer_wall_s(runtime) -> float:
    """Seconds of the decode MoE layers timed so far (each from its routing to the next one's)."""
    return sum(times.wall_s for times in runtime.stats.layer_times.values())


if __name__ == "__main__":
    main()
