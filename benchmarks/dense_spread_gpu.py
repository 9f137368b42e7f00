"""Why the dense time per decode layer differs between processes on one host, and by how much.

On the lent H100 host of session 12 the time a Mixtral decode layer with every expert resident
took came in two speeds, about 1.8 and 2.8 ms, the speed holding for a whole run and changing
between runs (``layer_breakdown.py``'s "hits" layers); calibration, seconds long, caught one speed
and the runs another (dense 2.40 calibrated against 1.56 in the runs, then 1.32 against 2.52). The
dense work is the host launching kernels; the CPU experts' OpenMP threads spin on the other cores
(``cpu_threads``). This starts fresh processes, the thread counts taking turns, and in each times
the dense term as calibration does, a bare kernel launch, and one CPU expert; it counts how often
the scheduler took the launching thread's core from it and how much time the hypervisor stole,
and notes which core the thread ran on and whether its hyperthread sibling was busy. The runtime
could change its thread count or placement; preemption and steal would blame other work on the
host. A spread that follows none of them is the host's own, and bounds what one calibration can
say about a later run.

    python benchmarks/dense_spread_gpu.py --out dense-spread.json

``--device cpu --threads 2 --processes 1 --layers 1`` runs it without a GPU, as a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

LAUNCHES = 2000
"""Bare kernel launches per timed block."""


def siblings() -> dict[int, set[int]]:
    """Each logical CPU's hyperthread siblings (itself included), from sysfs."""
    found = {}
    for path in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology/thread_siblings_list"):
        cpu = int(path.parent.parent.name[3:])
        cpus: set[int] = set()
        for part in path.read_text().strip().split(","):
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
        found[cpu] = cpus
    return found


def thread_cpus() -> dict[int, tuple[int, int]]:
    """For each thread of this process: the CPU it last ran on and its user time in clock ticks."""
    found = {}
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        found[int(task.name)] = (int(fields[36]), int(fields[11]))  # processor (field 39), utime (field 14)
    return found


def preempted() -> int:
    """Times the scheduler took a core from this thread while it could still run: another busy
    thread on its core, or the hypervisor."""
    for line in Path(f"/proc/self/task/{threading.get_native_id()}/status").read_text().splitlines():
        if line.startswith("nonvoluntary_ctxt_switches"):
            return int(line.split()[1])
    return 0


def steal_ticks() -> int:
    """Ticks the hypervisor gave this machine's CPUs to others, all CPUs together."""
    return int(Path("/proc/stat").read_text().splitlines()[0].split()[8])


def child(args: argparse.Namespace) -> dict:
    from expertcache.runtime.cpu_threads import keep_cpu_threads_spinning

    keep_cpu_threads_spinning()
    import torch

    from expertcache.runtime.calibrate import _time_outside_experts, cpu_expert_ms
    from expertcache.runtime.loader import attach
    from expertcache.runtime.synthetic import build_full_size
    from expertcache.simulator.config import CacheConfig

    device = torch.device(args.device)
    model, host, top_k = build_full_size(args.shape, args.layers, device=args.device)
    attach(model, host, CacheConfig(sets=1, ways=top_k), device, args.threads, None, top_k)  # torch computes on args.threads from here
    cpu_ms = cpu_expert_ms(model, args.threads)[1]
    dense, cpu_path = [], []
    preempted_before, steal_before, started = preempted(), steal_ticks(), time.perf_counter()
    for _ in range(args.repeats):
        resident, overhead, _ = _time_outside_experts(model, runtime=model.expertcache, launch_ms=0.0, copy_ms=0.0)
        dense.append(resident[1])
        cpu_path.append(overhead)
    seconds = time.perf_counter() - started
    preemptions_per_s = (preempted() - preempted_before) / seconds
    steal_share = (steal_ticks() - steal_before) / (os.sysconf("SC_CLK_TCK") * seconds * os.cpu_count())
    counter = torch.zeros(1, device=device)
    launch_us = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(LAUNCHES):
            counter.add_(1)
        launch_us.append(1e6 * (time.perf_counter() - started) / LAUNCHES)
        if device.type == "cuda":
            torch.cuda.synchronize()
    before = thread_cpus()
    time.sleep(0.5)
    after = thread_cpus()
    busy = {tid for tid, (_, ticks) in after.items() if ticks - before.get(tid, (0, ticks))[1] >= 0.4 * 0.5 * os.sysconf("SC_CLK_TCK")}
    main_cpu = after[os.getpid()][0]
    others = siblings().get(main_cpu, {main_cpu}) - {main_cpu}
    sibling_busy = any(after[tid][0] in others for tid in busy if tid != os.getpid())
    return {"threads": args.threads, "dense_ms": dense, "cpu_path_ms": cpu_path, "cpu_expert_ms": cpu_ms,
            "launch_us": statistics.median(launch_us), "preemptions_per_s": preemptions_per_s, "steal_share": steal_share,
            "main_cpu": main_cpu, "sibling_busy": sibling_busy,
            "busy_threads": len(busy), "process_threads": len(after)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="mixtral-8x7b")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers built")
    parser.add_argument("--threads", default="15,14,12", help="CPU expert thread counts, comma-separated, one process each in turn")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per thread count")
    parser.add_argument("--repeats", type=int, default=6, help="outside-experts measurements per process (more: a longer look inside one)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.threads = int(args.threads)
        print(json.dumps(child(args)))
        return
    topology = siblings()
    physical = len({min(group) for group in topology.values()})
    print(f"{len(topology)} logical CPUs on {physical} physical cores")
    rows = []
    for process in range(args.processes):
        for threads in args.threads.split(","):
            command = [sys.executable, __file__, "--child", "--shape", args.shape, "--layers", str(args.layers),
                       "--threads", threads, "--device", args.device, "--repeats", str(args.repeats)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"child failed: {done.stderr.strip().splitlines()[-1]}")
            row = json.loads(done.stdout.strip().splitlines()[-1]) | {"process": process}
            rows.append(row)
            print(f"threads {row['threads']:>2}, process {process}: dense {statistics.median(row['dense_ms']):.2f} ms "
                  f"({min(row['dense_ms']):.2f}-{max(row['dense_ms']):.2f}), CPU path {statistics.median(row['cpu_path_ms']):.2f}, "
                  f"CPU expert {row['cpu_expert_ms']:.2f}, main thread preempted {row['preemptions_per_s']:.0f}/s, steal {100 * row['steal_share']:.1f} %, launch {row['launch_us']:.1f} us, main on CPU {row['main_cpu']} "
                  f"(sibling busy: {row['sibling_busy']}), {row['busy_threads']} of {row['process_threads']} threads busy")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"logical_cpus": len(topology), "physical_cores": physical, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
