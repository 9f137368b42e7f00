"""In one process, rounds with the launcher thread taking turns with rounds queueing inline, and the launcher's timings.

    python benchmarks/launcher_ab_gpu.py SHAPE TRACE SETS WAYS OUT.json

Eight layers of a full-size shape, eta SETS x WAYS, routing forced from TRACE, 2 requests of 32
tokens, 15 threads, three rounds each way. Per round: decode tokens/s, each layer kind's wall /
planned / host ms, and for layers with CPU work the medians of the launcher's start latency, its
busy time and the main thread's time until it joins (which includes the queueing when inline).
"""
from expertcache.runtime.cpu_threads import keep_cpu_threads_spinning
keep_cpu_threads_spinning()
import json, statistics, sys, time
sys.path.insert(0, "benchmarks")
import torch
from eta_rounds import run_round
from expertcache.runtime import launcher as L
from expertcache.runtime.stats import LayerTimes
from expertcache.runtime.synthetic import build_full_size
from expertcache.simulator.config import CacheConfig
from expertcache.traces.io import read_trace

shape, trace, sets, ways, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
MODE = {"threaded": True}
events = []
orig_init, orig_start = L.Launcher.__init__, L.Launcher.start
def init(self, device, threaded=None):
    orig_init(self, device, MODE["threaded"])
def start(self, work, alongside_cpu_work=True):
    rec = {"submit": time.perf_counter(), "threaded": self._thread is not None and alongside_cpu_work, "cpu": alongside_cpu_work}
    def timed():
        rec["begin"] = time.perf_counter(); r = work(); rec["end"] = time.perf_counter(); return r
    join = orig_start(self, timed, alongside_cpu_work)
    def timed_join():
        rec["join"] = time.perf_counter(); r = join(); rec["joined"] = time.perf_counter(); events.append(rec); return r
    return timed_join
L.Launcher.__init__, L.Launcher.start = init, start
model, host, top_k = build_full_size(shape, 8, device="cuda")
prompts = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
config, tr = CacheConfig(sets=sets, ways=ways, policy="eta"), read_trace(trace)
rows = []
for mode in ["threaded", "inline"] * 3:
    MODE["threaded"] = mode == "threaded"
    run_round(model, host, top_k, config, 15, None, tr, prompts, 32, True, torch.device("cuda"))
    events.clear()
    stats = run_round(model, host, top_k, config, 15, None, tr, prompts, 32, False, torch.device("cuda"))
    cpu = [e for e in events if e["cpu"]]
    med = lambda f: round(1e3 * statistics.median(f(e) for e in cpu), 3) if cpu else None
    row = {"mode": mode, "tok/s": round(stats["decode_tokens_per_s"], 2),
           "kinds": {k: LayerTimes(**t).describe() for k, t in stats["layers_by_kind"].items()},
           "cpu layers": len(cpu), "submit->begin": med(lambda e: e["begin"] - e["submit"]),
           "launcher busy": med(lambda e: e["end"] - e["begin"]), "submit->join (main's CPU work)": med(lambda e: e["join"] - e["submit"]),
           "join wait": med(lambda e: e["joined"] - e["join"]), "launcher end - join": med(lambda e: e["end"] - e["join"]),
           "threads": len(__import__("os").listdir("/proc/self/task")), "cpu_s": {k: round(1e3 * v, 3) for k, v in stats.items() if "cpu" in k and isinstance(v, float)}}
    print(json.dumps(row), flush=True)
    rows.append(row)
json.dump(rows, open(out, "w"), indent=1)
