"""What a decode step costs the first time its sequence length occurs, per SDPA backend.

A profile of decode (``profile_decode_gpu.py``) showed ``scaled_dot_product_attention`` taking
7 ms of host time per call in the first placement profiled and 0.2 ms in the second, on the same
lengths. This times it directly: the attention layers of a full-size shape (every expert
resident, so nothing else varies) generate from a prompt whose lengths no earlier call used
("cold"), then again over the same lengths ("warm"), with each SDPA backend allowed in turn, and
times every step (the prompt's, then each decode step's):

    python benchmarks/attention_lengths_gpu.py --out attention-lengths.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from expertcache.runtime.loader import attach
from expertcache.runtime.synthetic import build_full_size
from expertcache.simulator.config import CacheConfig

BACKENDS = {
    "default": None,  # SDPA's own choice among every backend
    "no-cudnn": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
    "flash": [SDPBackend.FLASH_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
}


class StepClock:
    """A ``generate`` streamer that notes when each new token is out: step times, prefill first."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass

    def steps_ms(self) -> list[float]:
        return [1e3 * (b - a) for a, b in zip(self.times, self.times[1:])]  # the first put is the prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="mixtral-8x7b")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32, help="New tokens per generation.")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    model, host, top_k = build_full_size(args.shape, args.layers, device="cuda")
    experts = next(iter(host.values())).shape[0]
    attach(model, host, CacheConfig(sets=1, ways=experts * args.layers), torch.device("cuda"), 1, None, top_k, placement="static")
    model._forward_pre_hooks.clear()  # attach leaves out cuDNN: here each backend is chosen explicitly
    model._forward_hooks.clear()
    vocab = model.config.vocab_size
    rows = []
    prompt_tokens = 64
    for name, backends in BACKENDS.items():
        prompt_tokens += 2 * args.tokens  # lengths no earlier backend saw
        prompt = torch.randint(0, vocab, (1, prompt_tokens), device="cuda")
        row = {"backend": name, "prompt_tokens": prompt_tokens, "layers": args.layers}
        try:
            for phase in ("cold", "warm"):
                clock = StepClock()
                with sdpa_kernel(backends) if backends else contextlib.nullcontext(), torch.inference_mode():
                    torch.cuda.synchronize()
                    model.generate(prompt, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False, streamer=clock)
                steps = clock.steps_ms()
                row[f"{phase}_prefill_ms"] = steps[0]
                row[f"{phase}_decode_step_ms"] = statistics.median(steps[1:])
            row["first_length_cost_ms"] = row["cold_decode_step_ms"] - row["warm_decode_step_ms"]
        except RuntimeError as exc:  # a backend that cannot serve this shape
            row["error"] = str(exc).splitlines()[0]
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(args.out, "w") as f:
        json.dump({"machine": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
