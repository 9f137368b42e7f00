"""A layer's copies before its kernels, against behind its hits' kernels, taking turns in one process.

    python benchmarks/copies_first_ab_gpu.py --shape phi-3.5-moe --sets 5 --ways 7 --trace T --out F.json

Separate processes of the same code differ in host speed by more than the difference measured here
(BENCHMARKS.md, session 15), so the two orders take turns within one process
(``CachedExperts.copies_first``), ``--rounds`` each, on the first ``--layers`` layers of a
full-size shape with routing forced from a trace and the built-in h100 profile (``eta_rounds``).
"""

from __future__ import annotations

import argparse
import json

from expertcache.runtime.cpu_threads import keep_cpu_threads_spinning

keep_cpu_threads_spinning()

import torch  # noqa: E402

from eta_rounds import run_round  # noqa: E402
from expertcache.runtime.offload import CachedExperts  # noqa: E402
from expertcache.runtime.stats import LayerTimes  # noqa: E402
from expertcache.runtime.synthetic import build_full_size  # noqa: E402
from expertcache.simulator.config import CacheConfig  # noqa: E402
from expertcache.traces.io import read_trace  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="mixtral-8x7b")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers built")
    parser.add_argument("--trace", required=True, help="routing forced from this trace")
    parser.add_argument("--sets", type=int, default=16)
    parser.add_argument("--ways", type=int, default=1)
    parser.add_argument("--policy", default="eta")
    parser.add_argument("--threads", type=int, default=15)
    parser.add_argument("--requests", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each order")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    model, host, top_k = build_full_size(args.shape, args.layers, device=args.device)
    device = torch.device(args.device)
    prompts = torch.randint(0, model.config.vocab_size, (args.requests, 16), generator=torch.Generator().manual_seed(0))
    config, trace = CacheConfig(sets=args.sets, ways=args.ways, policy=args.policy), read_trace(args.trace)
    rows = []
    for copies_first in [True, False] * args.rounds:
        CachedExperts.copies_first = copies_first
        run_round(model, host, top_k, config, args.threads, None, trace, prompts, args.tokens, True, device)  # warm-up
        stats = run_round(model, host, top_k, config, args.threads, None, trace, prompts, args.tokens, False, device)
        row = {
            "copies_first": copies_first, "decode_tokens_per_s": stats["decode_tokens_per_s"],
            "layers_by_kind": {kind: LayerTimes(**times).describe() for kind, times in stats["layers_by_kind"].items()},
        }  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    machine = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    with open(args.out, "w") as out:
        json.dump({"machine": machine, "args": vars(args), "rounds": rows}, out, indent=1)


if __name__ == "__main__":
    main()
