"""Every system side by side on this machine, at one budget, in one process: ``expertcache bench``.

The systems (``SYSTEMS``) run the same requests through the same runtime code, one after the
other, with routing forced from one trace so each sees the same experts. Per system: prefill
time, decode tokens/s, hit rate, energy per token (NVML, RAPL where readable), the roofline of
its own run (``simulator.roofline``), and the simulator's prediction for its recorded run, with
the profile calibrated at the start of the bench and with the seed's desktop profile. The
expertcache configuration is the one the simulator ranks first for this machine.

The roofline prices each run at the CPU expert time measured right after it: the lent H100 hosts'
CPUs drift by tens of percent within a bench, and a roofline at a CPU calibrated slower than the
runs overstates every system's share of it (Mixtral run 22: 93 % at calibration's CPU, 78 % at
the runs'). So with the dense time: where a run has enough all-hit decode layers, its roofline is
priced at the dense time they paid (``dense_in_run``), which lay up to 60 % from calibration's, in
either direction, on those hosts (BENCHMARKS.md, sessions 18 and 19).
"""

from __future__ import annotations

import importlib.util
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from expertcache.errors import ConfigError
from expertcache.runtime.calibrate import calibrate, cpu_expert_ms
from expertcache.runtime.energy import EnergyMeter
from expertcache.runtime.forced import TraceRouting
from expertcache.runtime.generate import timed_generate
from expertcache.runtime.loader import attach
from expertcache.runtime.record import Recorder, sibling
from expertcache.runtime.stats import LAYER_KINDS, LayerTimes
from expertcache.simulator.config import CacheConfig
from expertcache.simulator.costs import Profile, load_profile
from expertcache.simulator.engine import ReplayInput, simulate
from expertcache.simulator.policies import DEFAULT_POLICY
from expertcache.simulator.roofline import roofline
from expertcache.simulator.sweep import best_config, rank, run_sweep, runnable_candidates
from expertcache.traces.io import read_trace

SYSTEMS = {
    "expertcache": "the configuration the simulator ranks first for this machine",
    "fetch": "on-demand fetching: fully associative LRU over the same slots, misses copied and computed on the GPU",
    "static": "llama.cpp --n-cpu-moe: the last layers' experts on the GPU, the rest on the CPU",
    "cpu": "every expert on the CPU (llama.cpp --cpu-moe, Fiddler)",
    "gpu": "every expert on the GPU, where the device holds them all (the upper bound)",
    "accelerate": "transformers + accelerate offload (device_map='auto', max_memory): layers past the budget copied every pass",
}
DESKTOP = "desktop-4090"
SPOT_WARM_UP_S, SPOT_WINDOW_S = 0.5, 1.5
"""The CPU expert time measured after each run: a short warm-up, then one-token experts for this
long (twenty such estimates on one lent H100 host scattered by 0.21 ms of about 6, back to back)."""
DENSE_LAYERS_NEEDED = 32
"""All-hit decode layers a run needs before the dense time they paid stands for its own (its
roofline's, ``dense_in_run``; the bench's note on drift, ``dense_drift``)."""
DRIFT_NOTED = 0.2
"""How far the all-hit layers may run from their price before the bench says so. They are dense
work and GPU launches only, and the dense time is the term one calibration reads least surely: on
the lent H100 hosts it moved 0.7-1.2 ms per Mixtral layer between calibration and the runs
(BENCHMARKS.md, session 12)."""


@dataclass
class BenchSetup:
    """What every system is given: the slot budget, the requests and the routing."""

    slots: int  # expert slots the budget leaves
    all_slots: int  # expert slots the whole device would leave (for "gpu")
    budget_bytes: int
    trace_path: Path | None  # routing forced from this trace; None: the model's own routers
    requests: int = 2
    prompt_tokens: int = 16
    new_tokens: int = 32
    threads: int = 1
    rounds: int = 1  # every system once per round, rounds one after another; each row is its median run
    accelerate_tokens: int = 8  # new tokens of accelerate's one request: at seconds per token, enough to time it
    timing_path: Path | None = None  # every run's per-layer timing in one Parquet file, rewritten after each run
    cuda_graphs: bool = True  # decode replays CUDA graphs of the work between experts (runtime.graphs) on a GPU


def check_systems(systems: list[str]) -> None:
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise ConfigError(f"unknown system '{unknown[0]}'; known: {', '.join(SYSTEMS)}")
    if "accelerate" in systems and importlib.util.find_spec("accelerate") is None:
        raise ConfigError("system 'accelerate' needs the accelerate package: pip install 'expertcache[bench]'")


def choose_config(trace_path: Path, setup: BenchSetup, top_k: int, profile: Profile) -> CacheConfig:
    """The runnable configuration the simulator predicts fastest on ``trace_path`` for ``profile``,
    simulated in processes on every core (the machine is idle between calibration and the runs)."""
    todo = runnable_candidates(setup.slots, top_k, [setup.threads])
    ranked = rank(run_sweep([trace_path], todo, profile, executor="process"))
    return best_config(ranked, setup.budget_bytes)


def run_system(
    model, host: dict, top_k: int, system: str, config: CacheConfig, setup: BenchSetup, profile: Profile, record_path: Path
) -> dict:
    """Generate the bench's requests under one system; measure, record to ``record_path``, and price its run."""
    placement = {"expertcache": "cache", "gpu": "static"}.get(system, system)
    device = next(model.parameters()).device
    attach(model, host, config, device, setup.threads, profile, top_k, placement=placement, cuda_graphs=setup.cuda_graphs)
    runtime = model.expertcache
    if setup.trace_path is not None:
        runtime.routing = TraceRouting(read_trace(setup.trace_path), runtime.moe_layers, runtime.num_experts, top_k)
    runtime.recorder = Recorder(record_path, runtime, f"bench-{system}", deferred=True)  # written once the run is over
    prompts = torch.randint(0, model.config.vocab_size, (setup.requests, setup.prompt_tokens), generator=torch.Generator().manual_seed(0))
    meter = EnergyMeter(device)
    for request in range(setup.requests):
        runtime.begin_request(request)
        with torch.inference_mode():
            model.generate(prompts[request : request + 1].to(device), max_new_tokens=setup.new_tokens,
                           min_new_tokens=setup.new_tokens, do_sample=False)  # fmt: skip
    runtime.end_pass()
    drain_started = time.perf_counter()
    runtime.drain()  # its copies' energy is this system's, and their time must not slow the next
    drain_s = time.perf_counter() - drain_started
    joules = meter.joules()
    cpu_ms_after = cpu_expert_ms(model, setup.threads, warm_up_s=SPOT_WARM_UP_S, window_s=SPOT_WINDOW_S)[1]
    pace, split_pace = runtime.cpu_pace, runtime.split_pace  # the CPU speeds its misses were placed at, at the end (runtime.cpu_pace)
    runtime.recorder.close()
    stats = runtime.stats

    replay = ReplayInput.from_trace(read_trace(record_path))
    predicted = simulate(replay, config.geometry, config.policy, profile, setup.threads, config.seed, True, placement)
    desktop = load_profile(DESKTOP)
    on_desktop = simulate(replay, config.geometry, config.policy, desktop, desktop.thread_counts[-1], config.seed, placement=placement)
    measured = stats.summary()
    dense_ms = dense_in_run(measured["layers_by_kind"], profile.dense_ms[1])
    at_run = profile.with_cpu_at(setup.threads, cpu_ms_after)
    if dense_ms is not None:
        at_run = replace(at_run, dense_ms=at_run.dense_ms | {1: dense_ms})
    bound = roofline(replay, predicted.outcome, at_run, setup.threads)
    generated = setup.requests * setup.new_tokens
    row = {
        "system": system, "placement": placement, "sets": config.sets, "ways": config.ways, "policy": config.policy,
        "threads": setup.threads, "prefill_s": stats.prefill_s, "prefill_tokens": stats.prefill_tokens,
        "decode_tokens_per_s": stats.decode_tokens_per_s, "hit_rate": stats.hit_rate, "copies": stats.copies,
        "roofline_tokens_per_s": bound.tokens_per_s, "cpu_expert_ms_after": cpu_ms_after, "roofline_dense_ms": dense_ms,
        "predicted_tokens_per_s": predicted.tokens_per_s,
        "cpu_pace_scale": pace.scale if pace is not None and pace.observed else None,
        "split_pace_scale": split_pace.scale if split_pace is not None and split_pace.observed else None,
        "desktop_tokens_per_s": on_desktop.tokens_per_s,
        **{f"{source}_joules_per_token": value / generated for source, value in joules.items()},
        "copies_after_last_pass_s": drain_s,  # untimed, as in the simulator: no pass waited for them
        "measured": measured, "simulated": predicted.summary(),
    }  # fmt: skip
    del model.expertcache, runtime
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def run_bench(
    model, host: dict, top_k: int, systems: list[str], setup: BenchSetup, say: Callable[[str], None] = print,
    save: Callable[[Profile, CacheConfig, list[dict]], None] | None = None,
) -> tuple[Profile, CacheConfig, list[dict]]:
    """Calibrate, choose expertcache's configuration by simulation, then run every system.

    ``save`` receives the rows measured so far after every run, so a bench cut short (a time
    limit, Ctrl-C) still leaves what it measured."""
    check_systems(systems)
    device = next(model.parameters()).device
    attach(model, host, CacheConfig(sets=1, ways=top_k, policy="lru"), device, setup.threads, None, top_k, cuda_graphs=setup.cuda_graphs)
    say("calibrating this machine")
    profile = calibrate(model, name="bench", threads=sorted({1, setup.threads}), progress=lambda m: say(f"  measuring {m}"), slots=setup.slots)
    say("warming up")  # the first generate of a process is slow (allocations, kernel selection)
    with torch.inference_mode():
        model.generate(torch.zeros(1, setup.prompt_tokens, dtype=torch.long, device=device), max_new_tokens=4, do_sample=False)
    del model.expertcache
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        choice_trace = setup.trace_path
        if choice_trace is None:  # the model's own routing: record one run to choose from
            say("recording a trace to choose from")
            choice_trace = workdir / "choice.parquet"
            run_system(model, host, top_k, "expertcache", CacheConfig(sets=1, ways=setup.slots, policy=DEFAULT_POLICY), setup, profile, choice_trace)
        chosen = choose_config(choice_trace, setup, top_k, profile)
        say(f"simulator's choice: {chosen.sets} x {chosen.ways}, {chosen.policy}")
        configs = {}
        for system in systems:
            if system == "accelerate":
                continue  # after the rounds: it takes the host copies of the experts over
            if system == "gpu":
                num_experts = len(next(iter(host.values())))
                needed = len(host) * num_experts
                if setup.all_slots < needed:
                    say(f"gpu: skipped, the device holds {setup.all_slots} of the {needed} experts")
                    continue
                configs[system] = CacheConfig(sets=1, ways=needed, policy="lru")
            else:
                configs[system] = chosen if system == "expertcache" else CacheConfig(sets=1, ways=setup.slots, policy="lru")
        # interleaved rounds: a machine whose speed drifts during the bench biases no system
        runs: dict[str, list[dict]] = {system: [] for system in configs}
        timings: list[pd.DataFrame] = []  # the recordings' timing siblings, for setup.timing_path
        for round_ in range(setup.rounds):
            for system, config in configs.items():
                say(f"running {system}" + (f", round {round_ + 1} of {setup.rounds}" if setup.rounds > 1 else ""))
                record_path = workdir / f"{system}-{round_}.parquet"
                runs[system].append(run_system(model, host, top_k, system, config, setup, profile, record_path))
                if setup.timing_path:
                    timings.append(pd.read_parquet(sibling(record_path, "timing")).assign(system=system, round=round_))
                    pd.concat(timings, ignore_index=True).to_parquet(setup.timing_path, index=False)
                if save:
                    save(profile, chosen, [_median_run(system_runs) for system_runs in runs.values() if system_runs])
    rows = [_median_run(system_runs) for system_runs in runs.values()]
    if "accelerate" in systems:
        say("running accelerate, once, last (it takes the experts' host copies over)")
        rows.append(run_accelerate(model, host, setup))
    return profile, chosen, rows


def run_accelerate(model, host: dict, setup: BenchSetup) -> dict:
    """Peer (a) on the bench's weights, one request, timed from outside. It runs the model's own
    routers: offload copies every expert of a host-held layer whichever the router picks, so
    routing does not change its speed."""
    from expertcache.runtime.accelerate_offload import offloaded_model

    device = next(model.parameters()).device
    plain = offloaded_model(model, host, setup.budget_bytes, device)
    prompt = torch.randint(0, model.config.vocab_size, (1, setup.prompt_tokens), generator=torch.Generator().manual_seed(0))
    meter = EnergyMeter(device)
    _, prefill_s, tokens_per_s = timed_generate(plain, prompt.to(device), setup.accelerate_tokens)
    generated = 3 + setup.accelerate_tokens  # the warm-up's 2, the prefill run's 1, the timed run's
    return {
        "system": "accelerate", "placement": "accelerate", "prefill_s": prefill_s, "prefill_tokens": setup.prompt_tokens,
        "decode_tokens_per_s": tokens_per_s, "new_tokens": setup.accelerate_tokens,
        "gpu_layers": sum(1 for name, where in plain.hf_device_map.items() if re.search(r"layers\.\d+$", name) and where not in ("cpu", "disk")),
        **{f"{source}_joules_per_token": value / generated for source, value in meter.joules().items()},
    }  # fmt: skip


def _by_round(values: list[str]) -> str:
    """" (first, second, ...)" for more than one round's values, else nothing."""
    return f" ({', '.join(values)})" if len(values) > 1 else ""


def _median_run(runs: list[dict]) -> dict:
    """The run with the median decode speed (the lower one of an even count), with every run's speed."""
    ordered = sorted(runs, key=lambda row: row["decode_tokens_per_s"])
    return {**ordered[(len(ordered) - 1) // 2], "decode_tokens_per_s_runs": [row["decode_tokens_per_s"] for row in runs]}


def format_layer_times(rows: list[dict]) -> str:
    """Markdown: each system's decode layers by how their misses ran (``stats.LAYER_KINDS``), as
    count and milliseconds per layer measured / as the miss rule priced them (from a layer's routing
    to the next one's; a pass's last MoE layer is not timed), and the host's part of the measured
    time. Where a run is slower than predicted, this says which kind of layer the time went to."""
    kinds = [kind for kind in LAYER_KINDS if any(kind in r.get("measured", {}).get("layers_by_kind", {}) for r in rows)]
    lines = ["| system | " + " | ".join(kinds) + " | host queueing CPU results, s |", "|---" * (len(kinds) + 2) + "|"]
    for r in rows:
        if "measured" not in r:
            continue
        cells = [_layer_cell(r["measured"]["layers_by_kind"].get(kind)) for kind in kinds]
        lines.append(f"| {r['system']} | " + " | ".join(cells) + f" | {r['measured']['output_queue_s']:.2f} |")
    return "\n".join(lines)


def dense_in_run(layers_by_kind: dict[str, dict], calibrated_ms: float) -> float | None:
    """The one-token dense time (ms) a run's all-hit decode layers paid: calibration's, plus their
    mean time beyond their price (an all-hit layer is priced as dense work and the hits' launches).
    None with fewer than ``DENSE_LAYERS_NEEDED`` of them: the all-CPU peer has none."""
    hits = layers_by_kind.get("hits")
    if hits is None or hits["layers"] < DENSE_LAYERS_NEEDED:
        return None
    return max(0.0, calibrated_ms + 1e3 * (hits["wall_s"] - hits["planned_s"]) / hits["layers"])


def dense_drift(rows: list[dict]) -> str | None:
    """A line for when every system's all-hit layers together (32 at least) ran more than
    ``DRIFT_NOTED`` from their price: the runs' time outside experts differs from calibration's
    (the host's state moved, or the runs do work its all-hit pass does not), and every prediction
    carries the difference. None otherwise."""
    hits = sum(
        (LayerTimes(**r["measured"]["layers_by_kind"]["hits"]) for r in rows if "hits" in r.get("measured", {}).get("layers_by_kind", {})),
        LayerTimes(),
    )
    if hits.layers < DENSE_LAYERS_NEEDED or hits.planned_s <= 0 or abs(hits.wall_s / hits.planned_s - 1) <= DRIFT_NOTED:
        return None
    measured, priced = 1e3 * hits.wall_s / hits.layers, 1e3 * hits.planned_s / hits.layers
    return (f"all-hit layers ran {measured:.2f} ms against {priced:.2f} priced ({hits.wall_s / hits.planned_s - 1:+.0%}): the time outside "
            "experts in these runs differs from calibration's, and every prediction above carries the difference")  # fmt: skip


def roofline_note(rows: list[dict], profile: Profile, threads: int) -> str:
    """A line saying at which CPU speed and dense time the rooflines were priced: each run's."""
    after = [r["cpu_expert_ms_after"] for r in rows if "cpu_expert_ms_after" in r]
    if not after:
        return ""
    calibrated = profile.cpu_expert_ms[threads][1]
    note = (f"rooflines at the CPU expert time measured after each run, {min(after):.2f}-{max(after):.2f} ms "
            f"(calibrated {calibrated:.2f} ms, one token, {threads} threads)")  # fmt: skip
    dense = [r["roofline_dense_ms"] for r in rows if r.get("roofline_dense_ms") is not None]
    if dense:
        note += (f", and at the dense time each run's all-hit layers paid, {min(dense):.2f}-{max(dense):.2f} ms (calibrated "
                 f"{profile.dense_ms[1]:.2f} ms; calibrated where a run had fewer than {DENSE_LAYERS_NEEDED} of them)")  # fmt: skip
    paced = [r["cpu_pace_scale"] for r in rows if r.get("cpu_pace_scale")]
    if paced:
        note += f"; expertcache placed its misses at its own CPU experts' pace, ending at {min(paced) * calibrated:.2f}-{max(paced) * calibrated:.2f} ms"
    split = [r["split_pace_scale"] for r in rows if r.get("split_pace_scale")]
    if split:
        note += f", its splits' CPU shares at {min(split):.2f}-{max(split):.2f} times their part of that"
    return note


def _layer_cell(layers: dict | None) -> str:
    return "–" if layers is None else LayerTimes(**layers).describe()


def format_table(rows: list[dict]) -> str:
    """Markdown: each system's numbers and expertcache's speed over it, measured and predicted (here
    and on the seed's desktop). The ratio predicted here says whether a goal was within the model's
    reach at all: the simulator's choice is the configuration it predicts fastest.
    Systems timed from outside (accelerate) have no cache, recorded run or prediction: "–".
    With several rounds, each round's speed and ratio follow in parentheses: on a host whose CPU
    drifts during the bench, rounds can disagree on which goals hold."""
    ours = next((r for r in rows if r["system"] == "expertcache"), None)
    lines = [
        "| system | slots | prefill s | decode tok/s | hit rate | roofline tok/s | of roofline | expertcache is "
        "| predicted (calibrated) | predicted on the seed's desktop | GPU J/token | CPU J/token |",
        "|---" * 12 + "|",
    ]
    for r in rows:
        ratio = predicted_ratio = desktop_ratio = "–"
        speed = f"{r['decode_tokens_per_s']:.2f}" + _by_round([f"{v:.2f}" for v in r.get("decode_tokens_per_s_runs", [])])
        if ours is not None and r is not ours:
            ratio = f"{ours['decode_tokens_per_s'] / r['decode_tokens_per_s']:.2f}×"
            ours_runs, its_runs = ours.get("decode_tokens_per_s_runs", []), r.get("decode_tokens_per_s_runs", [])
            if len(ours_runs) == len(its_runs):
                ratio += _by_round([f"{a / b:.2f}×" for a, b in zip(ours_runs, its_runs)])
            if "predicted_tokens_per_s" in r:
                predicted_ratio = f"{ours['predicted_tokens_per_s'] / r['predicted_tokens_per_s']:.2f}×"
            if "desktop_tokens_per_s" in r:
                desktop_ratio = f"{ours['desktop_tokens_per_s'] / r['desktop_tokens_per_s']:.2f}×"
        if r["placement"] == "accelerate":
            slots = f"{r['gpu_layers']} layers on the GPU"
        elif r["placement"] == "cpu":
            slots = "–"
        else:
            slots = f"{r['sets']} × {r['ways']} {r['policy'] if r['placement'] in ('cache', 'fetch') else ''}".strip()
        simulated = "roofline_tokens_per_s" in r
        cells = [
            r["system"], slots, f"{r['prefill_s']:.2f}", speed,
            f"{r['hit_rate']:.1%}" if simulated else "–",
            f"{r['roofline_tokens_per_s']:.2f}" if simulated else "–",
            f"{r['decode_tokens_per_s'] / r['roofline_tokens_per_s']:.0%}" if simulated else "–",
            ratio,
            f"{r['predicted_tokens_per_s']:.2f} ({predicted_ratio})" if simulated else "–",
            f"{r['desktop_tokens_per_s']:.2f} ({desktop_ratio})" if simulated else "–",
            f"{r['gpu_joules_per_token']:.1f}" if "gpu_joules_per_token" in r else "n/a",
            f"{r['cpu_joules_per_token']:.1f}" if "cpu_joules_per_token" in r else "n/a",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
