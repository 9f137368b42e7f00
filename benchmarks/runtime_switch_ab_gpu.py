"""One switch of the runtime on and off, taking turns in one process.

    python benchmarks/runtime_switch_ab_gpu.py --switch slot-graphs --shape phi-3.5-moe --slots 5 --ways 7 --new-tokens 32 --rounds 3 --trace T --out F.json

Separate processes of the same code differ in host speed by more than a small change to the runtime
gains (BENCHMARKS.md, session 15), so the two settings take turns within one process, ``--rounds``
each, each run after its own one-request warm-up, on the first ``--layers`` layers of a full-size
shape with routing forced from a trace and the built-in h100 profile (``eta_rounds``). The switches:

- ``copies-first``: a layer's copies start before its kernels are queued, or behind its hits'
  kernels (``CachedExperts.copies_first``);
- ``slot-graphs``: one-row GPU experts replayed from each slot's CUDA graph, or run eagerly
  (``CachedExperts.slot_graphs``, ``runtime.slot_graphs``);
- ``split-graphs``: a decode step's split expert replayed from its slot's two split graphs, or run
  eagerly while whole experts still replay theirs (``SlotGraphs.splits``);
- ``torch-kernel``: one-row CPU experts and split shares on torch's own kernel, or on oneDNN
  (``CachedExperts.one_row_kernel``, ``runtime.cpu_kernel``); the CPU pace sees the difference and
  places the misses by it.

``--device cpu --layers 1 --new-tokens 3 --rounds 1 --threads 2`` runs it without a GPU, as a smoke
test (where the slot graphs do not exist, both settings run eagerly).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from expertcache.runtime.cpu_threads import keep_cpu_threads_spinning

keep_cpu_threads_spinning()

import torch  # noqa: E402

from eta_rounds import add_round_options, eta_cache, keep_row, run_round  # noqa: E402
from expertcache.runtime.offload import CachedExperts  # noqa: E402
from expertcache.runtime.stats import LayerTimes  # noqa: E402
from expertcache.runtime.synthetic import build_full_size  # noqa: E402
from expertcache.simulator.costs import ONEDNN, TORCH  # noqa: E402
from expertcache.traces.io import read_trace  # noqa: E402


def _copies_first(runtime: CachedExperts, on: bool) -> None:
    runtime.copies_first = on


def _slot_graphs(runtime: CachedExperts, on: bool) -> None:
    if not on:
        runtime.slot_graphs = None


def _split_graphs(runtime: CachedExperts, on: bool) -> None:
    if not on and runtime.slot_graphs is not None:
        runtime.slot_graphs.activations = None  # SlotGraphs.splits: False


def _torch_kernel(runtime: CachedExperts, on: bool) -> None:
    runtime.one_row_kernel = TORCH if on else ONEDNN


SWITCHES: dict[str, Callable[[CachedExperts, bool], None]] = {
    "copies-first": _copies_first, "slot-graphs": _slot_graphs, "split-graphs": _split_graphs, "torch-kernel": _torch_kernel,
}  # fmt: skip
"""Each switch, set on a freshly attached runtime."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_round_options(parser)
    parser.add_argument("--switch", required=True, choices=sorted(SWITCHES))
    parser.add_argument("--ways", type=int, default=1, help="Ways of each of the --slots sets.")
    parser.add_argument("--trace", required=True, help="Force the routing from this trace.")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    model, host, top_k = build_full_size(args.shape, args.layers, device=args.device)
    device = torch.device(args.device)
    prompts = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    config, trace = eta_cache(args.slots, args.ways), read_trace(args.trace)
    machine = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    rows: list[dict] = []
    for round_ in range(1, args.rounds + 1):
        for on in (True, False):
            for warm_up in (True, False):
                stats = run_round(model, host, top_k, config, args.threads, None, trace, prompts, args.new_tokens, warm_up, device,
                                  adjust=lambda runtime: SWITCHES[args.switch](runtime, on))  # fmt: skip
            keep_row(rows, {
                "round": round_, "switch": args.switch, "on": on, "tok_s": stats["decode_tokens_per_s"], "machine": machine,
                "layers_by_kind": {kind: LayerTimes(**times).describe() for kind, times in stats["layers_by_kind"].items()},
            }, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
