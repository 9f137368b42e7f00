"""Does calibration read the CPU expert slower than the runs that follow it, and why?

In Mixtral runs 22 and 23 and Phi drawn 10 (session 17) the bench's calibration priced a one-token
CPU expert 20-30 % slower than it ran right after each system's run. This times the CPU expert in
1.5 s windows (as the bench's spot check does) before and after each step calibration takes (a full
``calibrate``; or one at a time: one-thread experts, a ``generate``, the decode passes timed outside
experts, the generation loop's steps), counts the process's threads that spin while the host sleeps
(an OpenMP team left behind by a step would steal cores), and times how much CPU experts and copies
slow each other with the link kept busy by 24 queued copies, against calibration's own measure.

    python benchmarks/cpu_drift_gpu.py --out cpu-drift.json                  # calibrations between spot checks
    python benchmarks/cpu_drift_gpu.py --steps --out cpu-drift-steps.json    # calibration's steps one by one
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from expertcache.runtime.cpu_threads import keep_cpu_threads_spinning

keep_cpu_threads_spinning()  # before torch loads OpenMP, as the CLI's model commands do

import torch  # noqa: E402

from expertcache.runtime import calibrate as C  # noqa: E402
from expertcache.runtime.loader import attach  # noqa: E402
from expertcache.runtime.synthetic import build_full_size  # noqa: E402
from expertcache.simulator.config import CacheConfig  # noqa: E402

THREADS = 15
TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds so far of each of this process's threads."""
    spent = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            spent[tid] = (int(fields[11]) + int(fields[12])) / TICK
        except OSError:
            pass
    return spent


def spinning() -> dict:
    """Threads that stayed busy while the main thread slept for a second."""
    before = thread_cpu_s()
    time.sleep(1.0)
    after = thread_cpu_s()
    busy = [after[t] - before.get(t, 0.0) for t in after]
    return {"threads": len(after), "busy_threads": sum(1 for v in busy if v > 0.5), "cpu_s_per_s": round(sum(busy), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="mixtral-8x7b")
    parser.add_argument("--steps", action="store_true", help="time after each of calibration's steps, not after whole calibrations")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    log = []

    def note(what: str, **values) -> None:
        row = {"t": round(time.perf_counter() - started, 1), "what": what, **values}
        print(json.dumps(row), flush=True)
        log.append(row)
        with open(args.out, "w") as f:
            json.dump(log, f, indent=1)

    model, host, top_k = build_full_size(args.shape, device="cuda")
    device = torch.device("cuda")
    attach(model, host, CacheConfig(sets=1, ways=top_k, policy="lru"), device, THREADS, None, top_k)
    runtime = model.expertcache
    hidden = model.config.get_text_config().hidden_size
    rows = C._every_expert(runtime)
    cpu_expert = C._cpu_expert_runner(runtime, rows)
    x = torch.randn(1, hidden, dtype=runtime.layout.dtype)
    slot = torch.empty(runtime.layout.numel, dtype=runtime.layout.dtype, device=device)
    stream = torch.cuda.Stream()
    torch.set_num_threads(THREADS)

    def spot() -> float:
        return round(C.cpu_expert_ms(model, THREADS, warm_up_s=0.5, window_s=1.5)[1], 3)

    def pump(copies: int) -> tuple[torch.cuda.Event, torch.cuda.Event]:
        with torch.cuda.stream(stream):
            start = torch.cuda.Event(enable_timing=True)
            start.record(stream)
            for _ in range(copies):
                slot.copy_(next(rows), non_blocking=True)
            end = torch.cuda.Event(enable_timing=True)
            end.record(stream)
        return start, end

    def steady_contention(rounds: int = 5, copies: int = 24) -> dict:
        """CPU experts alone and while 24 copies keep the link busy; the copies alone and under them."""
        samples = []
        for _ in range(rounds):
            n, t = 0, time.perf_counter()
            while time.perf_counter() - t < copies * 0.0066:
                cpu_expert(x)
                n += 1
            cpu_alone = (time.perf_counter() - t) / n
            start, end = pump(copies)
            end.synchronize()
            copy_alone = start.elapsed_time(end) / copies
            start, end = pump(copies)
            n, t = 0, time.perf_counter()
            while not end.query():
                cpu_expert(x)
                n += 1
            cpu_both = (time.perf_counter() - t) / n
            end.synchronize()
            samples.append({"cpu_alone_ms": 1e3 * cpu_alone, "cpu_both_ms": 1e3 * cpu_both, "copy_alone_ms": copy_alone,
                            "copy_both_ms": start.elapsed_time(end) / copies})  # fmt: skip
        mean = {k: round(statistics.fmean(s[k] for s in samples), 3) for k in samples[0]}
        return mean | {"cpu_slowdown": round(mean["cpu_both_ms"] / mean["cpu_alone_ms"], 3),
                       "copy_slowdown": round(mean["copy_both_ms"] / mean["copy_alone_ms"], 3)}  # fmt: skip

    def contention() -> None:
        note("steady contention", **steady_contention())
        cpu_slowdown, copy_slowdown = C._contention(slot, rows, lambda: cpu_expert(x), 5)
        note("calibrate's contention", cpu_slowdown=round(cpu_slowdown, 3), copy_slowdown=round(copy_slowdown, 3))

    C._keep_running(lambda: cpu_expert(x), 1.0)
    if not args.steps:
        for _ in range(8):
            note("spot after attach", cpu_ms=spot())
        contention()
        for k in range(2):
            t = time.perf_counter()
            p = C.calibrate(model, name="drift", threads=[1, THREADS])
            note(f"calibrate {k}", s=round(time.perf_counter() - t, 1), cpu15=round(p.cpu_expert_ms[THREADS][1], 3),
                 cpu1=round(p.cpu_expert_ms[1][1], 3), cpu_slowdown=round(p.cpu_slowdown_during_copy, 3),
                 copy_slowdown=round(p.copy_slowdown_during_cpu, 3), h2d=round(p.h2d_gbps, 2))  # fmt: skip
            for _ in range(6):
                note(f"spot after calibrate {k}", cpu_ms=spot())
            contention()
        return

    def generate() -> None:
        with torch.inference_mode():
            model.generate(torch.zeros(1, 16, dtype=torch.long, device=device), max_new_tokens=4, do_sample=False)

    steps = [("nothing", lambda: None), ("one-thread experts", lambda: C.cpu_expert_ms(model, 1, warm_up_s=1.0, window_s=4.0)),
             ("generate", generate), ("layers outside experts", lambda: C._time_outside_experts(model, runtime, 0.02, 6.5)),
             ("step overhead", lambda: C._step_overhead_ms(model, runtime))]  # fmt: skip
    note("after attach", cpu_ms=[spot() for _ in range(4)], **spinning())
    for _ in range(2):
        for name, step in steps:
            t = time.perf_counter()
            step()
            note(f"ran {name}", s=round(time.perf_counter() - t, 1))
            note(f"after {name}", cpu_ms=[spot() for _ in range(4)], **spinning())


if __name__ == "__main__":
    main()
