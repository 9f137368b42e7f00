"""The expert cache at run time: the ``expertcache`` entry of transformers' experts interface.

Per MoE layer of a forward pass, in the order the simulator replays them: the layer's accesses
(position by position, rank by rank) go through the shared cache core. Experts that were
resident run on the GPU from their slots; the others run on the CPU right away while a copy
into their new slot starts on the copy stream, so the next token that wants them hits. In a
multi-token pass (prefill) a missed expert is computed on the GPU instead when the cost
profile says copy-then-compute finishes before the CPU would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS, ExpertsInterface

from expertcache.runtime.experts import ExpertLayout, expert_ffn
from expertcache.runtime.slots import SlotPool
from expertcache.runtime.stats import RuntimeStats
from expertcache.simulator.config import CacheConfig
from expertcache.simulator.costs import Profile
from expertcache.simulator.placements import StaticPlacement, placement_decider

IMPLEMENTATION = "expertcache"
PRICED_TOKENS = 4096
"""Token counts up to which CPU-or-GPU is decided from the profile; larger batches count as this."""

Routing = Callable[[int, int, int], tuple[np.ndarray, np.ndarray]]
"""(layer, step, tokens) → forced (top_k_index, top_k_weights) for trace-forced routing."""


@dataclass
class LayerPass:
    """What happened in one MoE layer of one forward pass; handed to the recorder."""

    layer: int
    index: np.ndarray  # [tokens, top_k] experts chosen
    weights: np.ndarray  # [tokens, top_k] router weights applied
    hit: np.ndarray  # [tokens * top_k] in execution order
    slot: np.ndarray
    cpu_s: float = 0.0
    gpu_s: float = 0.0
    copy_wait_s: float = 0.0
    gpu_events: list = field(default_factory=list)  # (start, end) CUDA events around GPU work
    wait_events: list = field(default_factory=list)  # (before, after) CUDA events around copy waits


class CachedExperts:
    """Host copies of every routed expert, the GPU slot pool, the cache core and the counters.

    Reached from a loaded model as ``model.expertcache``. ``placement`` (see ``simulator.placements``) also
    runs the systems expertcache is compared with, through the same code.
    """

    def __init__(
        self,
        layers: list[tuple[int, nn.Module]],
        host: dict[int, torch.Tensor],
        layout: ExpertLayout,
        config: CacheConfig,
        num_layers: int,
        device: torch.device,
        profile: Profile,
        threads: int,
        top_k: int,
        placement: str = "cache",
    ) -> None:
        self.config = config
        self.layout = layout
        self.host = host  # layer → [num_experts, layout.numel], pinned on CUDA machines
        self.device = device
        self.moe_layers = [layer for layer, _ in layers]
        self.layers = dict(layers)  # layer → its experts module
        self.num_experts = layers[0][1].num_experts
        self.top_k = top_k
        self.placement = placement
        self.cache = placement_decider(placement, config, num_layers, self.num_experts, self.moe_layers)
        self.pool = SlotPool(0 if placement == "cpu" else config.slots, layout.numel, layout.dtype, device)
        if isinstance(self.cache, StaticPlacement):
            for layer in self.moe_layers:
                first = int(self.cache.first_slot[layer])
                for expert in range(self.num_experts) if first >= 0 else ():
                    self.pool.fill(first + expert, host[layer][expert])
        self.stats = RuntimeStats(num_layers)
        self.threads = threads
        self._cpu_s = profile.cpu_table_s(_nearest(profile.thread_counts, threads), layout.nbytes, PRICED_TOKENS)
        self._gpu_s = profile.gpu_table_s(layout.nbytes, PRICED_TOKENS)
        self._copy_s = profile.copy_s(layout.nbytes)
        self.step = -1
        self.request = 0
        self.position = 0
        self._pass_tokens = 0
        self._pass_started: float | None = None
        self._pass_is_decode = False
        self._layers: list[LayerPass] = []
        self.recorder = None  # a runtime.record.Recorder while recording
        self.routing: Routing | None = None  # trace-forced routing, when set
        for layer, module in layers:
            module._expertcache = (self, layer)

    # -- passes and requests ---------------------------------------------------------------
    def begin_request(self, request: int) -> None:
        """Start a new prompt: positions count from zero again; the cache stays warm."""
        self.end_pass()
        self.request = request
        self.position = 0

    def end_pass(self) -> None:
        """Close the forward pass in progress, if any: resolve its timings, count, record."""
        if self._pass_started is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        wall = time.perf_counter() - self._pass_started
        for record in self._layers:
            record.gpu_s += sum(start.elapsed_time(end) for start, end in record.gpu_events) / 1e3
            record.copy_wait_s = sum(before.elapsed_time(after) for before, after in record.wait_events) / 1e3
            record.gpu_events, record.wait_events = [], []
            self.stats.layer_gpu_s[record.layer] += record.gpu_s
            self.stats.layer_cpu_s[record.layer] += record.cpu_s
            self.stats.copy_wait_s += record.copy_wait_s
        if self._pass_is_decode:
            self.stats.decode_tokens += self._pass_tokens
            self.stats.decode_s += wall
        else:
            self.stats.prefill_tokens += self._pass_tokens
            self.stats.prefill_s += wall
        if self.recorder is not None:
            self.recorder.on_pass(self, wall, self._layers)
        self._layers = []
        self.position += self._pass_tokens
        self._pass_started = None

    def _begin_pass(self, tokens: int) -> None:
        self.end_pass()
        self.step += 1
        self._pass_tokens = tokens
        self._pass_is_decode = self.position > 0 and tokens == 1
        self._pass_started = time.perf_counter()

    # -- one MoE layer -----------------------------------------------------------------------
    def forward(
        self, module: nn.Module, layer: int, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        tokens, top_k = top_k_index.shape
        if layer == self.moe_layers[0]:
            self._begin_pass(tokens)
        if self.routing is not None:
            forced_index, forced_weights = self.routing(layer, self.step, tokens)
            top_k_index = torch.as_tensor(forced_index, device=hidden.device).view(tokens, top_k)
            top_k_weights = torch.as_tensor(forced_weights, device=hidden.device, dtype=top_k_weights.dtype).view(tokens, top_k)
        index = top_k_index.cpu()
        weights = top_k_weights.detach().float().cpu().numpy()
        flat = index.reshape(-1).numpy()
        hit, slot, _ = self.cache.access_many(np.full(flat.shape, layer), flat, weights.reshape(-1), self.step)
        self.stats.layer_hits[layer] += int(hit.sum())
        self.stats.layer_misses[layer] += int((~hit).sum())
        record = LayerPass(layer, index.numpy(), weights, hit, slot)
        self._layers.append(record)

        # Fill each slot once, with the last expert the core put there during this layer; a
        # resident expert is read from its slot before any fill can overwrite it.
        fills: dict[int, int] = {}
        for i in np.flatnonzero(~hit & (slot >= 0)):
            fills[int(slot[i])] = int(flat[i])
        filled = {expert: s for s, expert in fills.items()}
        experts, first = np.unique(flat, return_index=True)  # ascending ids, as eager sums them
        resident, fetched, on_cpu = [], [], []
        for expert, i in zip(experts.tolist(), first.tolist()):
            rank_idx, token_idx = torch.where(index.T == expert)
            if hit[i]:
                resident.append((expert, int(slot[i]), token_idx, rank_idx))
                continue
            n = min(len(token_idx), PRICED_TOKENS)
            faster_fetched = n > 1 and self._copy_s + self._gpu_s[n] < self._cpu_s[n]
            if expert in filled and (self.placement == "fetch" or faster_fetched):
                fetched.append((expert, filled[expert], token_idx, rank_idx))
            else:
                on_cpu.append((expert, -1, token_idx, rank_idx))
        self.stats.bypassed += int((~hit & (slot < 0)).sum())

        results: dict[int, torch.Tensor] = {}
        self._run_on_gpu(module, record, hidden, resident, results)
        for s, expert in fills.items():
            self.pool.fill(s, self.host[layer][expert])
        self.stats.copies += len(fills)
        self.stats.fetched += len(fetched)
        self._run_on_gpu(module, record, hidden, fetched, results)
        self._run_on_cpu(module, record, hidden, on_cpu, results)

        final = torch.zeros_like(hidden)
        for expert, _, token_idx, rank_idx in sorted(resident + fetched + on_cpu, key=lambda job: job[0]):
            out = results[expert]
            if getattr(module, "has_post_expert_norm", False):
                out = module.post_expert_norm(out)
            token_idx = token_idx.to(hidden.device)
            out = out * top_k_weights[token_idx, rank_idx.to(hidden.device), None]
            final.index_add_(0, token_idx, out.to(final.dtype))
        return final

    def _run_on_gpu(self, module, record: LayerPass, hidden, jobs, results) -> None:
        if not jobs:
            return
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
        started = time.perf_counter()
        for expert, slot, token_idx, _ in jobs:
            waited = len(record.wait_events)
            weights = self.layout.views(self.pool.acquire(slot, record.wait_events))
            self.stats.copy_waits += len(record.wait_events) - waited
            results[expert] = expert_ffn(module, hidden[token_idx.to(hidden.device)], weights)
            self.pool.release(slot)
        if on_cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            record.gpu_events.append((start, end))
        else:
            record.gpu_s += time.perf_counter() - started

    def _run_on_cpu(self, module, record: LayerPass, hidden, jobs, results) -> None:
        if not jobs:
            return
        started = time.perf_counter()
        hidden_cpu = hidden.detach().to("cpu")
        for expert, _, token_idx, _ in jobs:
            weights = self.layout.views(self.host[record.layer][expert])
            out = expert_ffn(module, hidden_cpu[token_idx], weights)
            results[expert] = out.to(self.device, non_blocking=True)
        record.cpu_s += time.perf_counter() - started


def _nearest(choices: list[int], value: int) -> int:
    return min(choices, key=lambda c: (abs(c - value), -c))


def expertcache_experts_forward(
    module: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """The function registered as ``experts_implementation="expertcache"``."""
    runtime, layer = module._expertcache
    return runtime.forward(module, layer, hidden_states, top_k_index, top_k_weights)


def register() -> None:
    """Make ``experts_implementation="expertcache"`` known to transformers (idempotent)."""
    ExpertsInterface.register(IMPLEMENTATION, expertcache_experts_forward)
    assert IMPLEMENTATION in ALL_EXPERTS_FUNCTIONS
