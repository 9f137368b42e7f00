"""Decode speed of one cache configuration on a full-size shape's first layers, routing forced from
a trace (or the synthesized routers' own): the probe for comparing two versions of the runtime on one machine.

Run it once per version, the versions taking turns, each appending a JSON line per round to the same file.
An older version is imported by putting a copy of its package first on ``PYTHONPATH`` (laid out as
installed: ``expertcache/`` holding ``runtime/``, ``simulator/``, ``traces/`` and ``analysis/``):

    mkdir -p old-src old/expertcache && git archive REV | tar -x -C old-src
    cp old-src/expertcache/*.py old/expertcache/
    for d in runtime simulator traces analysis; do cp -r old-src/$d old/expertcache/; done
    for round in 1 2; do
      PYTHONPATH=old python benchmarks/decode_speed_gpu.py --trace T --label before --out speed.jsonl
      python benchmarks/decode_speed_gpu.py --trace T --label after --out speed.jsonl
    done

Every version runs the same requests with the same profile (the built-in ``h100`` one unless
``--profile`` names a calibrated one, which Phi-3.5-MoE needs for its misses to be split), so the
miss rule places misses alike and the difference is the runtime's own; one request warms up first
(``eta_rounds``). ``--device cpu --layers 1 --tokens 4`` runs
it without a GPU, as a smoke test.
"""

from __future__ import annotations

import argparse
import json
import time

from expertcache.runtime.cpu_threads import keep_cpu_threads_spinning

keep_cpu_threads_spinning()

import torch  # noqa: E402

import expertcache  # noqa: E402
from eta_rounds import run_round  # noqa: E402
from expertcache.runtime.stats import LayerTimes  # noqa: E402
from expertcache.runtime.synthetic import build_full_size  # noqa: E402
from expertcache.simulator.config import CacheConfig  # noqa: E402
from expertcache.simulator.costs import load_profile  # noqa: E402
from expertcache.traces.io import read_trace  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="mixtral-8x7b")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers built")
    parser.add_argument("--trace", help="routing forced from this trace; default: the synthesized model's own routers")
    parser.add_argument("--sets", type=int, default=16)
    parser.add_argument("--ways", type=int, default=1)
    parser.add_argument("--policy", default="eta")
    parser.add_argument("--placement", default="cache")
    parser.add_argument("--threads", type=int, default=15)
    parser.add_argument("--requests", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    parser.add_argument("--rounds", type=int, default=1, help="measured rounds after the warm-up, each its own row")
    parser.add_argument("--profile", help="cost profile (JSON) the miss rule prices by; default: the built-in h100 one")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--label", required=True, help="names this version in the output")
    parser.add_argument("--out", required=True, help="JSON lines file to append this run's row to")
    args = parser.parse_args()
    model, host, top_k = build_full_size(args.shape, args.layers, device=args.device)
    device = torch.device(args.device)
    prompts = torch.randint(0, model.config.vocab_size, (args.requests, 16), generator=torch.Generator().manual_seed(0))
    config, trace = CacheConfig(sets=args.sets, ways=args.ways, policy=args.policy), read_trace(args.trace) if args.trace else None
    profile = load_profile(args.profile) if args.profile else None
    run_round(model, host, top_k, config, args.threads, profile, trace, prompts, args.tokens, True, device, args.placement)
    for round_ in range(1, args.rounds + 1):
        started = time.perf_counter()
        stats = run_round(model, host, top_k, config, args.threads, profile, trace, prompts, args.tokens, False, device, args.placement)
        row = {
            "label": args.label, "round": round_, "package": expertcache.__file__, "wall_s": time.perf_counter() - started,
            "decode_tokens_per_s": stats["decode_tokens_per_s"], "hit_rate": stats["hit_rate"],
            "layers_by_kind": {kind: LayerTimes(**times).describe() for kind, times in stats["layers_by_kind"].items()},
        }  # fmt: skip
        print(f"{args.label} {round_}: {row['decode_tokens_per_s']:.2f} tok/s, hit rate {row['hit_rate']:.1%}; {row['layers_by_kind']}")
        with open(args.out, "a") as f:
            f.write(json.dumps(row | {"machine": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "args": vars(args)}) + "\n")


if __name__ == "__main__":
    main()
