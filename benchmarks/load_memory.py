"""Peak host memory of `expertcache run` on a real model directory, against the model's bytes.

    python benchmarks/load_memory.py --shape olmoe-1b-7b --dir /tmp/olmoe --budget 4GiB

Writes a full-size architecture with synthesized weights (safetensors) unless --dir already holds
one, then runs `expertcache run` on it in a child process and reports two peaks: resident memory
(ru_maxrss), which also counts the checkpoint's file pages that safetensors maps (page cache the
kernel can drop), and anonymous memory (RssAnon, sampled every 20 ms), which is what the process
really holds. Goal (issue 3): peak ≤ 1.15 × the model's bytes (experts live once on the host).
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
    child = subprocess.Popen(
        [sys.executable, "-m", "expertcache.cli", "run", "--model", str(model_dir), "--prompt", "The cache keeps",
         "--max-tokens", "16", "--gpu-budget", args.budget, "--device", args.device, "--hide-response"],  # fmt: skip
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    peak_anon = 0
    while child.poll() is None:
        peak_anon = max(peak_anon, _anonymous_bytes(child.pid))
        time.sleep(0.02)
    stdout, stderr = child.communicate()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(stdout[-800:], stderr[-800:] if child.returncode else "")
    print(json.dumps({"shape": args.shape, "model_bytes": model_bytes, "peak_rss_bytes": peak, "rss_ratio": peak / model_bytes,
                      "peak_anonymous_bytes": peak_anon, "anonymous_ratio": peak_anon / model_bytes,
                      "seconds": round(time.perf_counter() - started, 1), "returncode": child.returncode}))  # fmt: skip


def _anonymous_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


if __name__ == "__main__":
    main()
