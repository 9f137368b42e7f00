"""OLMoE-1B-7B shape at a small GPU budget: expertcache against transformers + accelerate offload
and against everything on the GPU, in one run, on a real model directory (synthesized weights).

    python benchmarks/peers_olmoe.py --dir /tmp/olmoe --budget 4GiB --new-tokens 32

Every system loads the same directory and generates greedily from the same prompt with the
model's own routers, so all must produce the same tokens; that is checked and printed.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from expertcache.runtime.generate import timed_generate
from expertcache.runtime.loader import load
from expertcache.runtime.synthetic import save_full_size
from expertcache.simulator.config import CacheConfig
from expertcache.units import parse_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--budget", default="4GiB")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--systems", default="gpu,expertcache,cpu,accelerate")
    parser.add_argument("--out")
    args = parser.parse_args()
    model_dir = Path(args.dir)
    if not (model_dir / "config.json").exists():
        save_full_size("olmoe-1b-7b", model_dir)
    ids = torch.randint(0, 50000, (1, 16), generator=torch.Generator().manual_seed(0)).cuda()
    budget = parse_bytes(args.budget)
    rows, outputs = [], {}
    for system in args.systems.split(","):
        if system == "gpu":
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda()
        elif system == "accelerate":
            model = AutoModelForCausalLM.from_pretrained(
                model_dir, dtype=torch.bfloat16, device_map="auto", max_memory={0: budget, "cpu": 100 * 2**30}
            )
        else:
            model = load(model_dir, config=None if system == "expertcache" else CacheConfig(sets=1, ways=8),
                         device="cuda", gpu_budget=budget, max_tokens=64)  # fmt: skip
            if system == "cpu":
                from expertcache.runtime.loader import attach

                rt = model.expertcache
                attach(model, rt.host, rt.config, rt.device, rt.threads, None, rt.top_k, placement="cpu")
            model.expertcache.begin_request(0)
        out, prefill_s, tokens_per_s = timed_generate(model, ids, args.new_tokens)
        outputs[system] = out.cpu()
        row = {"system": system, "decode_tokens_per_s": tokens_per_s, "prefill_s": prefill_s,
               "gpu_peak_bytes": torch.cuda.max_memory_allocated(), "machine": torch.cuda.get_device_name(), "cores": os.cpu_count()}  # fmt: skip
        if hasattr(model, "expertcache"):
            model.expertcache.end_pass()
            row.update(hit_rate=model.expertcache.stats.hit_rate, sets=model.expertcache.config.sets, ways=model.expertcache.config.ways)
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    reference = next(iter(outputs.values()))
    same = {name: bool(torch.equal(out, reference)) for name, out in outputs.items()}
    ours = next((r for r in rows if r["system"] == "expertcache"), None)
    print(f"\nsame tokens as {next(iter(outputs))}: {same}")
    for r in rows:
        ratio = ours["decode_tokens_per_s"] / r["decode_tokens_per_s"] if ours else float("nan")
        print(f"| {r['system']} | {r['decode_tokens_per_s']:.2f} tok/s | prefill {r['prefill_s']:.2f} s | expertcache is {ratio:.2f}x |")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "same_tokens": same}, indent=1))


if __name__ == "__main__":
    main()
