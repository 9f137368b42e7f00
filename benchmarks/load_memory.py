"""Peak host memory of `expertcache run` on a real model directory, against the model's bytes.

    python benchmarks/load_memory.py --shape olmoe-1b-7b --dir /tmp/olmoe --budget 4GiB

Writes a full-size architecture with synthesized weights (safetensors) unless --dir already holds
one, then runs `expertcache run` on it in a child process and reads the child's peak resident
memory (ru_maxrss). Goal (issue 3): peak ≤ 1.15 × the model's bytes (experts live once on the host).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from expertcache.runtime.synthetic import save_full_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="olmoe-1b-7b")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--budget", default="4GiB")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    model_dir = Path(args.dir)
    if not (model_dir / "config.json").exists():
        started = time.perf_counter()
        save_full_size(args.shape, model_dir, args.layers)
        print(f"wrote {model_dir} in {time.perf_counter() - started:.0f} s", flush=True)
    model_bytes = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "expertcache.cli", "run", "--model", str(model_dir), "--prompt", "The cache keeps",
         "--max-tokens", "16", "--gpu-budget", args.budget, "--device", args.device, "--hide-response"],  # fmt: skip
        capture_output=True, text=True,
    )
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(run.stdout[-800:], run.stderr[-800:] if run.returncode else "")
    print(json.dumps({"shape": args.shape, "model_bytes": model_bytes, "peak_rss_bytes": peak, "ratio": peak / model_bytes,
                      "seconds": round(time.perf_counter() - started, 1), "returncode": run.returncode}))  # fmt: skip


if __name__ == "__main__":
    main()
