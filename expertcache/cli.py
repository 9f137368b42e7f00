"""The ``expertcache`` command line: record, simulate, sweep, analyze and run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from expertcache.errors import ExpertCacheError
from expertcache.simulator.geometry import SET_COUNTS
from expertcache.simulator.policies import POLICIES

PROFILE_HELP = "Cost profile: a built-in name (h100, desktop-4090) or a JSON file from `expertcache calibrate`. [default: h100]"


class Commands(click.Group):
    """A click group that reports expertcache's own errors, and click's about a command's options,
    as one line on stderr, exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ExpertCacheError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except click.UsageError as exc:  # raised while the subcommand parses its options
            where = exc.ctx.command_path if exc.ctx else ctx.command_path
            click.echo(f"error: {exc.format_message()} (see {where} --help)", err=True)
            sys.exit(exc.exit_code)


COUNT = click.IntRange(min=1)
"""Tokens, threads, repeats, layers: counts where 0 or less means nothing."""


class ThreadCounts(click.ParamType):
    """``--threads 1,2,4``: positive thread counts, comma-separated."""

    name = "N,N,..."

    def convert(self, value, param, ctx) -> list[int]:
        if isinstance(value, list):  # click may convert a value twice
            return value
        try:
            counts = [int(part) for part in str(value).split(",")]
        except ValueError:
            self.fail(f"'{value}' is not a comma-separated list of thread counts", param, ctx)
        if min(counts) < 1:
            self.fail(f"'{value}': thread counts must be at least 1", param, ctx)
        return counts


class DeviceName(click.ParamType):
    """``--device``: where the runtime runs, ``cpu``, ``cuda`` or ``cuda:N``, refused while the
    options are read when it is anything else (torch would raise its own traceback later)."""

    name = "cpu|cuda[:N]"

    def convert(self, value, param, ctx) -> str:
        kind, colon, index = str(value).partition(":")
        if kind not in ("cpu", "cuda") or (colon and not (kind == "cuda" and index.isdigit())):
            self.fail(f"'{value}' is not a device expertcache runs on: cpu, cuda or cuda:N", param, ctx)
        return str(value)


class OutputPath(click.Path):
    """A path the command writes. Its folder (the path itself, for a directory) is made as
    ``mkdir -p`` makes it, and found writable, while the options are read: a sweep or a bench
    never runs to its end only to fail on where to put what it measured."""

    def __init__(self, directory: bool = False, suffixes: tuple[str, ...] = ()) -> None:
        super().__init__(file_okay=not directory, dir_okay=directory)
        self.suffixes = suffixes

    def convert(self, value, param, ctx) -> str:
        value = super().convert(value, param, ctx)
        path = Path(value)
        if self.suffixes and path.suffix not in self.suffixes:
            self.fail(f"{path}: write a {' or '.join(self.suffixes)} file", param, ctx)
        folder = path if self.dir_okay else path.parent
        if folder.exists() and not folder.is_dir():
            self.fail(f"{folder} is a file, not a folder", param, ctx)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.fail(f"cannot make the folder {folder}: {exc.strerror}", param, ctx)
        if not os.access(folder, os.W_OK):
            self.fail(f"cannot write in {folder}", param, ctx)
        return value


MODEL_COMMANDS = {"run", "record", "calibrate", "tune", "bench"}
"""The commands that compute experts on the CPU: their OpenMP threads keep spinning between
bursts (``runtime.cpu_threads``)."""
FULL_SHAPES = ["mixtral-8x7b", "phi-3.5-moe", "olmoe-1b-7b", "qwen3-30b-a3b"]
"""``runtime.synthetic.FULL_SHAPES``, named here so that ``--help`` does not import torch."""


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="expertcache")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Run Mixture-of-Experts models larger than the GPU, with a GPU expert cache whose
    configuration is chosen by replaying recorded expert traces.

    \b
    Typical flow:
      expertcache sweep --trace run.parquet --budget 20GiB --out best.json
      expertcache simulate --trace run.parquet --sets 14 --ways 4 --policy markov
      expertcache bench --synthetic mixtral-8x7b --budget 24GiB --trace run.parquet   (GPU)
      expertcache policies
    Every command without --trace uses the small sample trace shipped with the package.
    """
    if ctx.invoked_subcommand in MODEL_COMMANDS:
        from expertcache.runtime.cpu_threads import keep_cpu_threads_spinning

        keep_cpu_threads_spinning()


@main.command()
def policies() -> None:
    """List every replacement policy that --policy accepts."""
    width = max(len(name) for name in POLICIES)
    for name, policy in POLICIES.items():
        click.echo(f"{name:<{width}}  {policy.description}")


def _trace_path(trace: str | None) -> str:
    from expertcache.traces.io import sample_trace_path

    return trace if trace is not None else str(sample_trace_path())


@main.command()
@click.option("--trace", "trace_path", metavar="PATH", help="Trace to replay. [default: the packaged sample]")
@click.option("--sets", type=int, required=True, help="Number of sets N (1 = fully associative).")
@click.option("--ways", type=int, required=True, help="Ways per set M.")
@click.option("--policy", default="lru", show_default=True, help="Replacement policy (see `expertcache policies`).")
@click.option("--mapping", default="modulo", show_default=True, help="How (layer, expert) picks a set: modulo or layer.")
@click.option("--profile", "profile_name", metavar="NAME|PATH", help=PROFILE_HELP)
@click.option("--threads", type=COUNT, help="CPU threads for misses. [default: the profile's largest]")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random policy.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def simulate(trace_path, sets, ways, policy, mapping, profile_name, threads, seed, fmt) -> None:
    """Replay one trace through one cache configuration and predict hit rate and tokens/s."""
    from expertcache.simulator.costs import load_profile
    from expertcache.simulator.engine import ReplayInput, simulate as run
    from expertcache.simulator.geometry import Geometry
    from expertcache.traces.io import read_trace

    geometry = Geometry(sets, ways, mapping)
    profile = load_profile(profile_name)
    threads = threads or profile.thread_counts[-1]
    trace = read_trace(_trace_path(trace_path))
    result = run(ReplayInput.from_trace(trace), geometry, policy, profile, threads, seed)
    summary = result.summary()
    if fmt == "json":
        summary["layer_hit_rate"] = [h / (h + m) if h + m else None for h, m in zip(result.layer_hits, result.layer_misses)]
        click.echo(json.dumps(summary))
        return
    click.echo(f"trace    {trace.path}  ({trace.meta.model}, {trace.num_accesses:,} accesses)")
    click.echo(f"cache    {sets} sets x {ways} ways = {geometry.slots} slots, policy {policy}, {threads} CPU threads, profile {profile.name}")
    click.echo(f"hits     {result.hits:,}   misses {result.misses:,} ({result.bypassed:,} not cached, {result.split:,} split)   "
               f"hit rate {result.hit_rate:.1%} (decode {result.decode_hit_rate:.1%})")  # fmt: skip
    click.echo(f"decode   {result.tokens_per_s:.2f} tokens/s predicted")
    click.echo(
        f"time     GPU {result.gpu_s:.3f} s, CPU {result.cpu_s:.3f} s, PCIe busy {result.pcie_busy_s:.3f} s, "
        f"copy stalls {result.stall_s:.3f} s, overhead {result.overhead_s:.3f} s"
    )


@main.command()
@click.option("--trace", "trace_paths", multiple=True, metavar="PATH", help="Trace(s) to replay; repeat for several. [default: the packaged sample]")
@click.option("--budget", metavar="SIZE", help="GPU memory for expert slots, e.g. 20GiB. [default: a third of one trace's experts]")
@click.option("--slots", type=int, help="Total expert slots, instead of --budget.")
@click.option("--policies", "policy_list", default=",".join(POLICIES), show_default=True, help="Comma-separated policies; belady is shown as the bound, never chosen.")
@click.option("--threads", "thread_list", type=ThreadCounts(), help="Comma-separated CPU thread counts. [default: every count the profile measured]")
@click.option("--max-sets", type=COUNT, help="Largest set count N to try. [default: all]")
@click.option("--set-counts", "most_set_counts", type=click.IntRange(min=2), default=SET_COUNTS, show_default=True,
              help="Most set counts N to try: every one up to --max-sets when there are fewer, else this many, every small N then a log scale up to the largest.")
@click.option("--profile", "profile_name", metavar="NAME|PATH", help=PROFILE_HELP)
@click.option("--executor", type=click.Choice(["process", "serial", "ray"]), default="process", show_default=True, help="Where configurations run: local processes, this process, or a Ray cluster.")
@click.option("--workers", type=COUNT, help="Local processes. [default: all cores]")
@click.option("--address", help="Ray cluster address (with --executor ray). [default: start a local one]")
@click.option("--out", "out_path", type=OutputPath(), default="best-config.json", show_default=True, help="Where to write the best CacheConfig.")
@click.option("--results", "results_path", type=OutputPath(suffixes=(".csv", ".parquet")), help="Write every result to this .csv or .parquet file.")
@click.option("--top", type=COUNT, default=15, show_default=True, help="Rows of the ranked table to print.")
def sweep(trace_paths, budget, slots, policy_list, thread_list, max_sets, most_set_counts, profile_name, executor, workers, address, out_path, results_path, top) -> None:
    """Simulate the N x M geometries that fit the budget, for every policy and thread count,
    print the ranking and write the best configuration for `expertcache run --config`.

    For each set count N the sweep takes the most ways M that fit, since fewer ways leave
    memory unused. Budgets of thousands of slots (models of many small experts) try
    --set-counts of the N, spread from 1 to the largest.
    """
    from expertcache.errors import ConfigError
    from expertcache.simulator.costs import load_profile
    from expertcache.simulator.geometry import geometries_for_slots, slots_for_budget
    from expertcache.simulator.sweep import candidates, check_ray_address
    from expertcache.traces.io import read_trace
    from expertcache.units import format_bytes, parse_bytes

    if executor == "ray":
        check_ray_address(address)  # before anything is read or printed
    elif address:
        raise ConfigError("--address names a Ray cluster: give it with --executor ray")
    paths = list(trace_paths) or [_trace_path(None)]
    metas = [read_trace(p).meta for p in paths]
    shapes = {(m.num_layers, m.num_experts, m.top_k, m.expert_bytes) for m in metas}
    if len(shapes) > 1:
        raise ConfigError("all traces of one sweep must come from one model shape (layers, experts, top_k, expert bytes)")
    meta = metas[0]
    if budget and slots:
        raise ConfigError("give --budget or --slots, not both")
    budget_bytes = parse_bytes(budget) if budget else None
    if budget_bytes is not None:
        total = slots_for_budget(budget_bytes, meta.expert_bytes)
    elif slots is not None:
        total = slots
        budget_bytes = slots * meta.expert_bytes
    else:
        total = max(meta.top_k, len(meta.moe_layers) * meta.num_experts // 3)
        budget_bytes = total * meta.expert_bytes
    total = min(total, len(meta.moe_layers) * meta.num_experts)
    profile = load_profile(profile_name)
    threads = thread_list or profile.thread_counts
    profile.check_threads(threads)  # before the sweep starts, not in its first simulation
    policy_names = [p.strip() for p in policy_list.split(",") if p.strip()]
    todo = candidates(geometries_for_slots(total, meta.top_k, max_sets, most_set_counts), policy_names, threads)

    click.echo(f"{len(todo)} configurations ({total} slots of {format_bytes(meta.expert_bytes)}, profile {profile.name}) over {len(paths)} trace(s)", err=True)
    results, ranked, best = _sweep_and_choose(paths, todo, profile, budget_bytes, out_path, executor=executor, workers=workers, address=address)
    if results_path:
        _write_table(results, Path(results_path))

    bound = ranked[ranked.offline_only].set_index(["sets", "ways", "threads"]).hit_rate
    shown = ranked[~ranked.offline_only].head(top).reset_index(drop=True)
    click.echo(f"{'rank':>4} {'sets':>5} {'ways':>5} {'policy':<7} {'threads':>7} {'hit rate':>9} {'belady':>7} {'tokens/s':>9}")
    for i, row in shown.iterrows():
        optimum = bound.get((row.sets, row.ways, row.threads))
        optimum = f"{optimum:.1%}" if optimum is not None else "-"
        click.echo(f"{i + 1:>4} {row.sets:>5} {row.ways:>5} {row.policy:<7} {row.threads:>7} {row.hit_rate:>9.1%} {optimum:>7} {row.tokens_per_s:>9.2f}")
    click.echo(f"best: {best.sets} sets x {best.ways} ways, {best.policy}, {best.threads} threads -> {out_path}")


def _sweep_and_choose(paths, todo, profile, budget_bytes, out_path, **run_args):
    """Simulate every candidate with a progress bar, rank them, and write the best runnable one
    as the CacheConfig the runtime reads; returns (results, ranked, best)."""
    from expertcache.simulator.sweep import best_config, rank, run_sweep

    with click.progressbar(length=len(todo), label="simulating", file=sys.stderr) as bar:
        results = run_sweep(paths, todo, profile, on_progress=bar.update, **run_args)
    ranked = rank(results)
    best = best_config(ranked, budget_bytes)
    best.to_json(out_path)
    return results, ranked, best


def _read_table(path: Path, kind: str):
    """A .parquet or .csv table a user passed in, or one clear error."""
    import pandas as pd

    from expertcache.errors import ConfigError

    if not path.is_file():
        raise ConfigError(f"{path}: no such {kind} file")
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _write_table(frame, path: Path) -> None:
    """``frame`` as Parquet or CSV, by the suffix ``--results`` was checked for."""
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)


def _model_options(command):
    """Options shared by `run` and `record`."""
    options = [
        click.option("--model", "model_path", required=True, type=click.Path(), help="Local Hugging Face model directory (config.json + safetensors)."),
        click.option("--prompt", help="One prompt."),
        click.option("--prompt-file", type=click.Path(), help="A file with one prompt per line."),
        click.option("--n-prompts", type=COUNT, help="Use only the first K prompts of --prompt-file."),
        click.option("--max-tokens", type=COUNT, default=128, show_default=True, help="New tokens per prompt."),
        click.option("--config", "config_path", type=click.Path(), help="A CacheConfig JSON, e.g. from `expertcache sweep`."),
        click.option("--sets", type=int, help="Sets N (with --ways) instead of --config."),
        click.option("--ways", type=int, help="Ways M (with --sets)."),
        click.option("--policy", default=None, help="Replacement policy. [default: markov, or the config's]"),
        click.option("--threads", type=COUNT, help="CPU threads for misses. [default: all cores but one]"),
        click.option("--gpu-budget", help="Everything on the GPU: dense weights, KV cache, slots, e.g. 24GiB. [default: free GPU memory]"),
        click.option("--device", type=DeviceName(), default=None, help="cuda or cpu. [default: cuda when available]"),
        click.option("--profile", "profile_name", metavar="NAME|PATH", help=PROFILE_HELP),
        click.option("--hide-response", is_flag=True, help="Do not stream the generated text."),
        click.option("--trust-remote-code", is_flag=True, help="Allow the model directory's own Python code."),
        click.option("--enforce-eager", is_flag=True, help="Decode without CUDA graphs (by default a GPU replays each layer's work between its experts, and each GPU expert, from one)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _load_for_cli(model_path, config_path, sets, ways, policy, threads, gpu_budget, device, profile_name, max_tokens, trust_remote_code, enforce_eager):
    import torch

    from expertcache.errors import ConfigError
    from expertcache.runtime.loader import load
    from expertcache.simulator.config import CacheConfig
    from expertcache.simulator.policies import DEFAULT_POLICY
    from expertcache.units import parse_bytes

    if config_path and (sets or ways):
        raise ConfigError("give --config or --sets/--ways, not both")
    if (sets is None) != (ways is None):
        raise ConfigError("--sets and --ways go together")
    config = None
    if config_path:
        config = CacheConfig.from_json(config_path)
        if policy:
            config.policy = policy
    elif sets is not None:
        config = CacheConfig(sets=sets, ways=ways, policy=policy or DEFAULT_POLICY)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    budget = parse_bytes(gpu_budget) if gpu_budget else None
    return load(model_path, config=config, device=device, gpu_budget=budget, max_tokens=max_tokens + 4096,
                threads=threads, profile=profile_name, trust_remote_code=trust_remote_code, cuda_graphs=not enforce_eager,
                policy=policy or DEFAULT_POLICY)  # fmt: skip


def _generate_and_report(model, model_path, prompts, max_tokens, hide_response, trust_remote_code) -> None:
    from transformers import AutoTokenizer

    from expertcache.runtime.generate import generate_prompts

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    generate_prompts(model, tokenizer, prompts, max_tokens, stream=not hide_response)
    runtime = model.expertcache
    stats = runtime.stats
    config = runtime.config
    graphs = runtime.graphs
    decode = f"{graphs.captures} layer graphs captured in {graphs.capture_s:.2f} s" if graphs and graphs.captures else "eager"
    click.echo(f"\ncache    {config.sets} sets x {config.ways} ways, {config.policy}, {runtime.threads} CPU threads "
               f"(one-row experts on {runtime.one_row_kernel}), device {runtime.device}, decode {decode}")  # fmt: skip
    click.echo(f"decode   {stats.decode_tokens_per_s:.2f} tokens/s ({stats.decode_tokens} tokens); prefill {stats.prefill_tokens} tokens in {stats.prefill_s:.2f} s")
    click.echo(f"experts  hit rate {stats.hit_rate:.1%} ({stats.hits:,} hits, {stats.misses:,} misses, {stats.copies:,} copies, {stats.bypassed:,} not cached)")
    click.echo(f"misses   {stats.fetched:,} experts computed on the GPU after a copy ({stats.staged:,} through staging slots), "
               f"{stats.split:,} split between the CPU and the GPU, the rest on the CPU")  # fmt: skip
    click.echo(f"time     CPU experts {stats.layer_cpu_s.sum():.2f} s, GPU experts {stats.layer_gpu_s.sum():.2f} s, copy waits {stats.copy_wait_s:.3f} s ({stats.copy_waits}), "
               f"queueing CPU results to the GPU {stats.output_queue_s:.3f} s")  # fmt: skip
    if stats.layer_times:
        from expertcache.runtime.stats import LAYER_KINDS

        kinds = ", ".join(f"{kind} {stats.layer_times[kind].describe()}" for kind in LAYER_KINDS if kind in stats.layer_times)
        click.echo(f"layers   decode layers by how their misses ran, count: ms measured / priced (host's part): {kinds}")


@main.command()
@_model_options
def run(model_path, prompt, prompt_file, n_prompts, max_tokens, config_path, sets, ways, policy, threads, gpu_budget, device, profile_name, hide_response, trust_remote_code, enforce_eager) -> None:
    """Generate with the expert cache and report tokens/s, hit rate and where the time went."""
    from expertcache.runtime.generate import read_prompts

    prompts = read_prompts(prompt, prompt_file, n_prompts)
    model = _load_for_cli(model_path, config_path, sets, ways, policy, threads, gpu_budget, device, profile_name, max_tokens, trust_remote_code, enforce_eager)
    _generate_and_report(model, model_path, prompts, max_tokens, hide_response, trust_remote_code)


@main.command()
@_model_options
@click.option("--trace", "trace_path", required=True, type=OutputPath(), help="Where to write the trace (.parquet); timing and per-access siblings go beside it.")
def record(model_path, prompt, prompt_file, n_prompts, max_tokens, config_path, sets, ways, policy, threads, gpu_budget, device, profile_name, hide_response, trust_remote_code, enforce_eager, trace_path) -> None:
    """Like `run`, and write the expert trace of the run for `sweep` and `analyze`.

    A recording cut short keeps every completed token: `expertcache trace info` reads it.
    """
    from expertcache.runtime.generate import read_prompts
    from expertcache.runtime.record import Recorder, sibling

    prompts = read_prompts(prompt, prompt_file, n_prompts)
    model = _load_for_cli(model_path, config_path, sets, ways, policy, threads, gpu_budget, device, profile_name, max_tokens, trust_remote_code, enforce_eager)
    model.expertcache.recorder = Recorder(trace_path, model.expertcache, model_name=Path(model_path).name)
    try:
        _generate_and_report(model, model_path, prompts, max_tokens, hide_response, trust_remote_code)
    finally:
        model.expertcache.recorder.close()
    click.echo(f"trace    {trace_path} (+ {sibling(trace_path, 'timing').name}, {sibling(trace_path, 'access').name})")


@main.command()
@click.option("--family", type=click.Choice(["mixtral", "phimoe", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss"]), default="mixtral", show_default=True)
@click.option("--layers", type=COUNT, default=4, show_default=True, help="Decoder layers.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", required=True, type=OutputPath(directory=True), help="Directory to write the model and tokenizer to.")
def synthesize(family, layers, seed, out_dir) -> None:
    """Write a toy model of an MoE family with random weights (and a tokenizer) to try the tools on."""
    from expertcache.runtime.synthetic import build_tiny_model

    path = build_tiny_model(family, out_dir, num_layers=layers, seed=seed)
    click.echo(f"{family} model with {layers} layers written to {path}")


@main.command()
@click.argument("trace_paths", nargs=-1, metavar="[TRACE]...")
@click.option("--out", "out_dir", required=True, type=OutputPath(directory=True), help="Directory for reuse.json, figures and report.html.")
@click.option("--sweep", "sweep_path", type=click.Path(dir_okay=False), help="Results of `expertcache sweep --results` to plot as a heatmap.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="The chosen CacheConfig, marked on the sweep heatmap.")
@click.option("--timing", "timing_path", type=click.Path(dir_okay=False), help="A <trace>.timing.parquet from `expertcache record`.")
@click.option("--points", type=COUNT, default=10, show_default=True, help="Cache sizes on the hit-rate-against-capacity curves.")
def analyze(trace_paths, out_dir, sweep_path, config_path, timing_path, points) -> None:
    """Measure expert reuse in traces and write reuse.json, figures (PNG, SVG) and one
    self-contained report.html. Several traces are shown side by side.
    [default TRACE: the packaged sample]"""

    from expertcache.analysis.curves import capacities_for
    from expertcache.analysis.report import analyze as run_analysis
    from expertcache.errors import ConfigError
    from expertcache.simulator.config import CacheConfig
    from expertcache.traces.io import read_trace

    paths = list(trace_paths) or [_trace_path(None)]
    traces = {}
    for path in paths:
        name = Path(path).stem
        while name in traces:
            name += "'"
        traces[name] = read_trace(path)
    sweep = _read_table(Path(sweep_path), "sweep results") if sweep_path else None
    if sweep is not None and not {"sets", "ways", "policy", "tokens_per_s"} <= set(sweep.columns):
        raise ConfigError(f"{sweep_path}: not the results of `expertcache sweep --results`")
    timing = _read_table(Path(timing_path), "timing") if timing_path else None
    chosen = CacheConfig.from_json(config_path) if config_path else None
    first = next(iter(traces.values()))
    report = run_analysis(traces, out_dir, sweep, chosen, timing, capacities_for(first, points))
    for name, trace in traces.items():
        click.echo(f"{name}: {trace.num_accesses:,} accesses")
    click.echo(f"report   {report}")


def _model_and_experts(model_path, shape, layers, device, threads=None, trust_remote_code=False, gpu_budget=None, max_tokens=4096):
    """(model with its dense part on ``device``, host expert rows per layer, top_k), from a model
    directory or a full-size ``shape`` with synthesized weights, ready for ``loader.attach``. A
    model directory is loaded as ``run`` loads it: refused before any weight moves when
    ``gpu_budget`` (bytes; default: free GPU memory) cannot hold its dense part, ``max_tokens`` of
    key-value cache and top_k slots."""
    import torch

    from expertcache.errors import ConfigError

    if (model_path is None) == (shape is None):
        raise ConfigError("give exactly one of --model and --synthetic")
    if shape:
        if gpu_budget is not None:
            raise ConfigError("--gpu-budget applies to --model; --synthetic builds only --layers layers of its shape")
        from expertcache.runtime.synthetic import build_full_size

        return build_full_size(shape, layers, device=str(device))
    from expertcache.runtime.loader import load, model_dtype, plan_memory, read_model_config
    from expertcache.simulator.config import CacheConfig

    hf_config = read_model_config(model_path, trust_remote_code)
    top_k = plan_memory(hf_config, 2**62, 1, model_dtype(hf_config, "auto"), trust_remote_code).top_k
    smallest = CacheConfig(sets=1, ways=top_k, policy="lru")  # the caller attaches its own
    model = load(model_path, config=smallest, device=torch.device(device), gpu_budget=gpu_budget, max_tokens=max_tokens, threads=threads,
                 trust_remote_code=trust_remote_code)  # fmt: skip
    host = model.expertcache.host
    del model.expertcache
    return model, host, top_k


@main.command()
@click.option("--model", "model_path", type=click.Path(), help="Local model directory to calibrate for.")
@click.option("--synthetic", "shape", type=click.Choice(FULL_SHAPES), help="Calibrate for a full-size architecture with synthesized weights instead (GPU).")
@click.option("--layers", type=COUNT, default=2, show_default=True, help="Layers of the --synthetic model to build (timings are per layer).")
@click.option("--device", type=DeviceName(), default=None, help="cuda or cpu. [default: cuda when available]")
@click.option("--gpu-budget", help="GPU memory calibrating --model may use: dense weights, a short KV cache, top_k slots, e.g. 24GiB. [default: free GPU memory]")
@click.option("--threads", "thread_list", type=ThreadCounts(), help="Comma-separated CPU thread counts to measure. [default: 1, 2, 4, ... all cores]")
@click.option("--repeats", type=COUNT, default=5, show_default=True, help="Timed repetitions per measurement, of which the median is kept; CPU experts keep the mean of 32 or more, the one-token point over 4 s on each of torch's one-row kernels (oneDNN's, its own), the faster kept.")
@click.option("--trust-remote-code", is_flag=True)
@click.option("--enforce-eager", is_flag=True, help="Time the layers decoding without CUDA graphs, for runs with --enforce-eager.")
@click.option("--out", "out_path", type=OutputPath(), default="profile.json", show_default=True)
def calibrate(model_path, shape, layers, device, gpu_budget, thread_list, repeats, trust_remote_code, enforce_eager, out_path) -> None:
    """Measure this machine's cost profile for a model's expert shape: copy bandwidth, CPU and GPU
    expert times, time per layer outside experts, and how much GPU work the host's next layer
    hides. `sweep --profile` then predicts for this machine."""
    import time

    import torch

    from expertcache.runtime.calibrate import LONGEST_SEQUENCE
    from expertcache.runtime.calibrate import calibrate as measure
    from expertcache.runtime.loader import attach
    from expertcache.simulator.config import CacheConfig
    from expertcache.units import parse_bytes

    started = time.perf_counter()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    budget = parse_bytes(gpu_budget) if gpu_budget else None
    model, host, top_k = _model_and_experts(model_path, shape, layers, device, trust_remote_code=trust_remote_code, gpu_budget=budget,
                                            max_tokens=LONGEST_SEQUENCE)  # fmt: skip
    config = CacheConfig(sets=1, ways=top_k, policy="lru")
    model = attach(model, host, config, torch.device(device), torch.get_num_threads(), None, top_k, cuda_graphs=not enforce_eager)
    profile = measure(model, name=Path(out_path).stem, threads=thread_list, repeats=repeats, progress=lambda m: click.echo(f"measuring {m}", err=True))
    profile.to_json(out_path)
    click.echo(
        f"pinned copies {profile.h2d_gbps:.1f} GB/s; CPU expert (1 token) "
        + ", ".join(f"{t} threads {row[1]:.2f} ms ({profile.one_row_kernel_at(t)})" for t, row in profile.cpu_expert_ms.items())
    )
    click.echo(f"GPU expert (1 token) {profile.gpu_expert_ms[1]:.3f} ms; outside experts {profile.dense_ms[1]:.3f} ms per layer; CPU slowdown under copies {profile.cpu_slowdown_during_copy:.2f}, copies under CPU experts {profile.copy_slowdown_during_cpu:.2f}; queueing a GPU expert {profile.gpu_launch_ms:.3f} ms")
    if profile.split_launch_ms is not None:
        click.echo(f"a split expert's host time besides its CPU share {profile.split_launch_ms:.3f} ms")
    click.echo(f"a layer computing on the CPU pays {profile.cpu_path_overhead_ms:.3f} ms more (its input to the host, outputs back)")
    click.echo(f"GPU work hidden behind the next layer's dense work, at most {profile.dense_overlap_ms:.3f} ms per layer")
    click.echo(f"generate's own work between decode passes {profile.step_overhead_ms:.3f} ms per token")
    click.echo(f"the cache core deciding a layer, {profile.decision_slots} slots (fully associative / direct-mapped): "
               + ", ".join(f"{policy} {full:.3f} / {direct:.3f} ms" for policy, (full, direct) in profile.decision_ms.items()))  # fmt: skip
    click.echo(f"profile  {out_path}, {time.perf_counter() - started:.0f} s with loading the model")


@main.command()
@click.option("--model", "model_path", required=True, type=click.Path(), help="Local Hugging Face model directory.")
@click.option("--prompt", help="One prompt to record.")
@click.option("--prompt-file", type=click.Path(), help="A file with one prompt per line, like your workload's.")
@click.option("--n-prompts", type=COUNT, help="Use only the first K prompts of --prompt-file.")
@click.option("--max-tokens", type=COUNT, default=64, show_default=True, help="New tokens per prompt while recording.")
@click.option("--gpu-budget", help="Everything on the GPU: dense weights, KV cache, slots, e.g. 24GiB. [default: free GPU memory]")
@click.option("--threads", "thread_list", type=ThreadCounts(), help="Comma-separated CPU thread counts to measure and sweep. [default: 1, 2, 4, ... all cores]")
@click.option("--device", type=DeviceName(), default=None, help="cuda or cpu. [default: cuda when available]")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model directory's own Python code.")
@click.option("--enforce-eager", is_flag=True, help="Record and calibrate decoding without CUDA graphs, for runs with --enforce-eager.")
@click.option("--out-dir", default="tuned", show_default=True, type=OutputPath(directory=True), help="Where trace.parquet, profile.json and best-config.json go.")
def tune(model_path, prompt, prompt_file, n_prompts, max_tokens, gpu_budget, thread_list, device, trust_remote_code, enforce_eager, out_dir) -> None:
    """Record a short trace, calibrate this machine and sweep, in one command: the configuration
    for `expertcache run --config OUT_DIR/best-config.json`.

    Same as `record`, `calibrate --model` and `sweep --profile` one after the other, with the
    budget's slots as the sweep's.
    """
    from transformers import AutoTokenizer

    from expertcache.runtime.calibrate import calibrate as measure
    from expertcache.runtime.generate import generate_prompts, read_prompts
    from expertcache.runtime.record import Recorder
    from expertcache.simulator.sweep import runnable_candidates

    prompts = read_prompts(prompt, prompt_file, n_prompts)
    out = Path(out_dir)
    model = _load_for_cli(model_path, None, None, None, None, None, gpu_budget, device, None, max_tokens, trust_remote_code, enforce_eager)
    runtime = model.expertcache

    click.echo(f"recording {len(prompts)} prompt(s) x {max_tokens} tokens", err=True)
    runtime.recorder = Recorder(out / "trace.parquet", runtime, model_name=Path(model_path).name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        generate_prompts(model, tokenizer, prompts, max_tokens, stream=False)
    finally:
        runtime.recorder.close()
    runtime.recorder = None

    profile = measure(model, name="tuned", threads=thread_list, progress=lambda m: click.echo(f"measuring {m}", err=True))
    profile.to_json(out / "profile.json")

    todo = runnable_candidates(runtime.config.slots, runtime.top_k, profile.thread_counts)
    _, ranked, best = _sweep_and_choose([out / "trace.parquet"], todo, profile, runtime.config.budget_bytes, out / "best-config.json")
    for i, row in ranked.head(5).reset_index(drop=True).iterrows():
        click.echo(f"{i + 1:>4} {row.sets:>5} x {row.ways:<4} {row.policy:<7} {row.threads:>3} threads  hit rate {row.hit_rate:6.1%}  {row.tokens_per_s:8.2f} tokens/s")
    click.echo(f"best     {best.sets} sets x {best.ways} ways, {best.policy}, {best.threads} threads -> {out / 'best-config.json'}")
    click.echo(f"run it   expertcache run --model {model_path} --config {out / 'best-config.json'} --profile {out / 'profile.json'} --prompt ...")


@main.command()
@click.option("--model", "model_path", type=click.Path(), help="Local model directory to bench.")
@click.option("--synthetic", "shape", type=click.Choice(FULL_SHAPES), help="A full-size architecture with synthesized weights instead.")
@click.option("--layers", type=COUNT, help="Build only this many decoder layers of --synthetic. [default: all]")
@click.option("--budget", "budget_text", required=True, help="GPU memory for everything (dense weights, KV cache, slots), e.g. 24GiB.")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False), help="Force every system's routing from this trace. [default: the model's routers]")
@click.option("--systems", default=",".join(["expertcache", "fetch", "static", "cpu", "gpu", "accelerate"]), show_default=True, help="Comma-separated systems to run; accelerate (transformers + accelerate offload) runs once, after the rounds, and needs the bench extra.")
@click.option("--requests", type=COUNT, default=2, show_default=True)
@click.option("--prompt-tokens", type=COUNT, default=16, show_default=True, help="Random prompt tokens per request.")
@click.option("--new-tokens", type=COUNT, default=32, show_default=True, help="Greedy new tokens per request.")
@click.option("--rounds", type=COUNT, default=1, show_default=True, help="Run every system this many times, interleaved; report each one's median run (of an even count, the slower middle one). Where the host's CPU speed drifts during a bench, 3 give a true median.")
@click.option("--threads", type=COUNT, help="CPU threads for experts on the CPU. [default: all cores but one]")
@click.option("--device", type=DeviceName(), default=None, help="cuda or cpu. [default: cuda when available]")
@click.option("--out", "out_path", type=OutputPath(), help="Write the setup, the profile, the choice and every row as JSON, rewritten after every run (\"complete\": false until the end).")
@click.option("--timing-out", "timing_path", type=OutputPath(), help="Write every run's per-layer timing (system, round, and the recording's timing columns: docs/trace-format.md) as Parquet, rewritten after every run.")
@click.option("--enforce-eager", is_flag=True, help="Every system decodes without CUDA graphs (by default each replays its layers' work between the experts, and each GPU expert, from them).")
def bench(model_path, shape, layers, budget_text, trace_path, systems, requests, prompt_tokens, new_tokens, rounds, threads, device, out_path, timing_path, enforce_eager) -> None:
    """Run expertcache and the systems users would pick instead side by side, one budget, one run.

    Calibrates this machine, lets the simulator choose expertcache's configuration, then runs
    each system on the same requests and routing and prints decode and prefill speed, hit rate,
    roofline, energy per token and the simulator's predictions (this machine, the seed's desktop).
    """
    import torch

    from expertcache.errors import ConfigError
    from expertcache.runtime.bench import BenchSetup, check_systems, dense_drift, format_layer_times, format_table, roofline_note, run_bench
    from expertcache.runtime.loader import model_dtype, plan_memory, read_model_config
    from expertcache.runtime.pinned import check_host_memory
    from expertcache.units import parse_bytes

    if (model_path is None) == (shape is None):
        raise ConfigError("give exactly one of --model and --synthetic")  # before reading any config
    check_systems(systems.split(","))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for but this machine has no CUDA GPU; pass --device cpu")
    budget = parse_bytes(budget_text)
    threads = threads or max(1, (os.cpu_count() or 2) - 1)
    max_tokens = prompt_tokens + new_tokens + 8
    if shape:
        from expertcache.runtime.synthetic import full_size_config

        hf_config, dtype = full_size_config(shape, layers), torch.bfloat16
    else:
        hf_config = read_model_config(model_path)
        dtype = model_dtype(hf_config, "auto")
    plan = plan_memory(hf_config, budget, max_tokens, dtype)
    plan.check()
    check_host_memory(plan.all_experts * plan.expert_bytes, f"the {plan.all_experts} routed experts of {shape or model_path}")
    whole = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 2**62
    if trace_path:
        from expertcache.traces.io import read_trace

        read_trace(trace_path)  # refuse a bad trace before building anything
    click.echo(f"building {shape or model_path} on {device}", err=True)
    model, host, top_k = _model_and_experts(model_path, shape, layers, device, threads)
    setup = BenchSetup(
        slots=min(plan.slots, plan.all_experts), all_slots=plan_memory(hf_config, whole, max_tokens, dtype).slots, budget_bytes=budget,
        trace_path=Path(trace_path) if trace_path else None, requests=requests, prompt_tokens=prompt_tokens,
        new_tokens=new_tokens, threads=threads, rounds=rounds, timing_path=Path(timing_path) if timing_path else None,
        cuda_graphs=not enforce_eager,
    )  # fmt: skip
    machine = f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, {os.cpu_count()} cores, torch {torch.__version__}"

    def save(profile, chosen, rows, complete: bool = False) -> None:
        """The results so far as JSON, replaced whole each time: a bench cut short leaves a readable file."""
        if out_path:
            from dataclasses import asdict

            document = {"machine": machine, "budget": budget_text, "trace": trace_path, "complete": complete, "setup": asdict(setup),
                        "profile": asdict(profile), "chosen": asdict(chosen), "rows": rows}  # fmt: skip
            partial = Path(f"{out_path}.partial")
            partial.write_text(json.dumps(document, indent=1, default=str))
            os.replace(partial, out_path)

    profile, chosen, rows = run_bench(model, host, top_k, systems.split(","), setup, say=lambda m: click.echo(m, err=True), save=save)
    click.echo(f"\n{shape or Path(model_path).name}, budget {budget_text} ({plan.slots} slots), routing from "
               f"{Path(trace_path).name if trace_path else 'the model'}, {requests} requests x {prompt_tokens} prompt + "
               f"{new_tokens} new tokens, {threads} CPU threads{', eager decode' if enforce_eager else ''}"
               f"{f', median of {rounds} interleaved rounds' if rounds > 1 else ''}; {machine}\n")  # fmt: skip
    click.echo(format_table(rows))
    if note := roofline_note(rows, profile, threads):
        click.echo(f"\n{note}")
    click.echo("\ndecode layers by how their misses ran: count: ms per layer measured / as the miss rule priced it (host's part)\n")
    click.echo(format_layer_times(rows))
    save(profile, chosen, rows, complete=True)
    if drift := dense_drift(rows):
        click.echo(f"\nnote: {drift}")
    if out_path:
        click.echo(f"\nresults  {out_path}")


@main.group()
def trace() -> None:
    """Inspect and check trace files."""


@trace.command()
@click.argument("path", required=False)
def info(path) -> None:
    """Print a trace's metadata and size. [default: the packaged sample]"""
    from expertcache.traces.io import read_trace

    loaded = read_trace(_trace_path(path))
    frame = loaded.frame
    meta = loaded.meta
    click.echo(f"file          {loaded.path}")
    click.echo(f"model         {meta.model}")
    click.echo(f"shape         {meta.num_layers} layers ({len(meta.moe_layers)} MoE), {meta.num_experts} experts, top-{meta.top_k}, {meta.expert_bytes:,} bytes per expert ({meta.dtype})")
    click.echo(f"requests      {frame.request.nunique()}")
    for phase in ("prefill", "decode"):
        rows = frame[frame.phase == phase]
        tokens = len(rows[["request", "position"]].drop_duplicates())
        click.echo(f"{phase:<13} {tokens:,} tokens, {len(rows):,} accesses")
    click.echo(f"created       {meta.created}")
    click.echo(f"recorded with {json.dumps(meta.runtime) if meta.runtime else 'no runtime configuration'}")


@trace.command()
@click.argument("paths", nargs=-1, required=True)
def validate(paths) -> None:
    """Check that trace files follow the documented schema; exit 2 at the first that does not."""
    from expertcache.traces.io import read_trace

    for path in paths:
        loaded = read_trace(path)
        click.echo(f"{path}: ok ({loaded.num_accesses:,} accesses)")


@trace.command("synthesize")
@click.option("--shape", type=click.Choice(FULL_SHAPES), help="Take the layers, experts, top-k and expert bytes from this architecture.")
@click.option("--layers", type=COUNT, default=32, show_default=True, help="MoE layers (without --shape).")
@click.option("--experts", type=COUNT, default=8, show_default=True, help="Experts per layer (without --shape).")
@click.option("--top-k", type=COUNT, default=2, show_default=True, help="Experts chosen per token (without --shape).")
@click.option("--expert-bytes", type=COUNT, default=352_321_536, show_default=True, help="Bytes of one expert (without --shape).")
@click.option("--tokens", type=COUNT, default=128, show_default=True, help="Decode tokens per request.")
@click.option("--requests", type=COUNT, default=2, show_default=True)
@click.option("--stickiness", type=click.FloatRange(0.0, 1.0), default=0.15, show_default=True, help="Chance that a token keeps each of the previous token's experts.")
@click.option("--skew", type=click.FloatRange(min=0.0), default=0.25, show_default=True, help="How unevenly a layer's experts are chosen (0: evenly).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_path", required=True, type=OutputPath(), help="Trace file to write.")
def synthesize_trace(shape, layers, experts, top_k, expert_bytes, tokens, requests, stickiness, skew, seed, out_path) -> None:
    """Write decode routing drawn at random with tunable locality, for sweeps and benches of a
    model whose real routing you do not have (`bench --trace` forces it on a live run).

    The default stickiness and skew give routing as local as the real Mixtral-8x7B traces (reuse
    across consecutive tokens, and within the last 2 and 4 tokens; benchmarks/routing_locality.py
    fits them). It keeps Mixtral's locality, not the other model's own: record a real run where
    you can."""
    from expertcache.traces.synthetic import synthetic_trace

    if shape:
        import torch

        from expertcache.runtime.loader import plan_memory
        from expertcache.runtime.synthetic import full_size_config

        plan = plan_memory(full_size_config(shape), 2**40, 1, torch.bfloat16)
        layers, experts, top_k, expert_bytes = plan.num_moe_layers, plan.num_experts, plan.top_k, plan.expert_bytes
    drawn = synthetic_trace(tokens, num_layers=layers, num_experts=experts, top_k=top_k, requests=requests,
                            stickiness=stickiness, skew=skew, expert_bytes=expert_bytes, seed=seed)  # fmt: skip
    drawn.write(out_path)
    click.echo(f"{out_path}: {requests} requests x {tokens} decode tokens, {layers} layers, {experts} experts, top-{top_k}")


if __name__ == "__main__":
    main()
