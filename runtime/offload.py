"""The expert cache at run time: the ``expertcache`` entry of transformers' experts interface.

Per MoE layer of a forward pass, in the order the simulator replays them: the layer's accesses
(position by position, rank by rank) go through the shared cache core. Experts that were
resident run on the GPU from their slots (a decode step's, one row, replayed from the slot's CUDA
graph: ``runtime.slot_graphs``). Each miss runs where the simulator's rule
(``schedule.split_misses``) says it finishes first: on the CPU right away, on the GPU once
copied (into its new slot, or a staging slot when the policy does not keep it), or, for a
layer's last miss, shared between the two (``runtime.split``). Misses the cache keeps are copied
either way, so the next token that wants them hits. The host waits for the GPU once per layer,
for the routing; all GPU work is queued without waiting, so the CPU computes its share while the
GPU computes and the link copies theirs. The copies start first, before any kernel is queued:
the link ends most layers that copy.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS, ExpertsInterface

from expertcache.runtime.cpu_kernel import cpu_products
from expertcache.runtime.cpu_pace import SPLIT_RELAX, CpuPace
from expertcache.runtime.decode_reads import DecodeReads
from expertcache.runtime.experts import ExpertLayout, expert_ffn
from expertcache.runtime.graphs import DecodeGraphs
from expertcache.runtime.slot_graphs import SlotGraphs
from expertcache.runtime.slots import SlotPool, Stream, compute_stream
from expertcache.runtime.split import Cut, least_gpu_share, units_out
from expertcache.runtime.stats import RuntimeStats
from expertcache.simulator.config import CacheConfig
from expertcache.simulator.costs import Profile
from expertcache.simulator.placements import MISS_PATHS, StaticPlacement, placement_decider
from expertcache.simulator.schedule import CPU_ONLY, GPU_ONLY, rates_of, split_misses

IMPLEMENTATION = "expertcache"
PRICED_TOKENS = 4096
"""Token counts up to which CPU-or-GPU is decided from the profile; larger batches count as this."""
STAGING_SLOTS = 2
"""Slots outside the cache for misses the policy does not keep but that run faster on the GPU:
one being read while the next is copied. The memory plan counts them."""

Routing = Callable[[int, int, int], tuple[np.ndarray, np.ndarray]]
"""(layer, step, tokens) → forced (top_k_index, top_k_weights) for trace-forced routing."""
Landed = torch.cuda.Event | None
"""When a copy into a slot lands (``SlotPool.fill``); None on the CPU device, where copies are synchronous."""
SplitCopies = tuple[Landed, Landed]
"""A split's copies: its GPU units landed (None also when it has none), its output projection landed."""


@dataclass(frozen=True)
class StartedCopies:
    """The copies ``CachedExperts._start_copies`` started as soon as a layer was placed."""

    fetched: set[int]  # indices into the plan's fetched misses
    split: list[SplitCopies] | None  # each split's, in order; None: not started yet


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
    routed_at: float = 0.0  # perf_counter() once the layer's routing was on the host
    kind: str = "hits"  # one of stats.LAYER_KINDS
    expert_s: float = 0.0  # when the miss rule expected the layer's expert work to end, from routing
    host_free_s: float = 0.0  # when it expected the host to be done with the layer, from routing
    cpu_priced_s: float = 0.0  # the CPU work the rule priced (LayerPlan.cpu_priced_s), beside the measured cpu_s
    split_share: float = float("nan")  # the GPU's share of the layer's split miss; NaN: none split
    # from routing to the next MoE layer's routing, as priced (expert work, then the dense time of the
    # layers between) and as measured; NaN for a pass's last MoE layer, whose end lies in the next pass
    planned_s: float = float("nan")
    wall_s: float = float("nan")
    host_s: float = 0.0  # from routing until the experts function returned: the host's part of wall_s
    output_queue_s: float = 0.0  # host time queueing the copies of CPU results to the GPU


class CachedExperts:
    """Host copies of every routed expert, the GPU slot pool, the cache core and the counters.

    Reached from a loaded model as ``model.expertcache``. ``placement`` (see ``simulator.placements``) also
    runs the systems expertcache is compared with, through the same code.
    """

    copies_first = True
    """Start a layer's copies before queueing its kernels, as the miss rule prices them. False
    queues them behind the hits' kernels, the runtime's earlier order; only
    ``benchmarks/runtime_switch_ab_gpu.py`` asks for it, to measure the difference in one process."""

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
        graphs: DecodeGraphs | None = None,
        slot_graphs: bool = False,
        pace_cpu: bool = False,
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
        self._miss_path = MISS_PATHS[placement]
        staging = 0 if self._miss_path == CPU_ONLY else STAGING_SLOTS
        self._staging = list(range(config.slots, config.slots + staging))
        self._next_staging = 0
        slots = 0 if placement == "cpu" else config.slots + staging
        self.pool = SlotPool(slots, layout.numel, layout.dtype, device)
        # each slot's parameter views, made once: a layer reads them per expert. (Not the host rows':
        # views would keep rows alive that their owner frees, as bench's accelerate peer does.)
        self._slot_views = [layout.views(self.pool.buffer[s]) for s in range(slots)]
        self._zero_rows: dict[int, torch.Tensor] = {}
        if isinstance(self.cache, StaticPlacement):
            for layer in self.moe_layers:
                first = int(self.cache.first_slot[layer])
                for expert in range(self.num_experts) if first >= 0 else ():
                    self.pool.fill(first + expert, host[layer][expert])
        self.stats = RuntimeStats(num_layers)
        self.threads = threads
        self._cpu_s = profile.cpu_table_s(profile.nearest_thread_count(threads), layout.nbytes, PRICED_TOKENS)
        self._gpu_s = profile.gpu_table_s(layout.nbytes, PRICED_TOKENS)
        self._dense_s = profile.dense_table_s(PRICED_TOKENS)
        self._rates = rates_of(profile, layout.nbytes)
        # the kernel of one-row CPU experts (runtime.cpu_kernel): the one the profile priced them on
        self.one_row_kernel = profile.one_row_kernel_at(threads)
        if self._rates[5] > 0:  # the profile allows splits: at this model's least GPU share, or none
            self._rates[5] = least_gpu_share(layers[0][1], layout)
        # one-row experts replayed per slot (runtime.slot_graphs), with a split's halves where this
        # runtime splits; None: they run eagerly
        self.slot_graphs = (
            SlotGraphs(layers[0][1], self._slot_views, layout.hidden_size(layers[0][1]), layout.dtype, device,
                       splits=self._rates[5] > 0)
            if slot_graphs and slots else None
        )  # fmt: skip
        # the CPU's speed as the runtime's own CPU experts find it (runtime.cpu_pace); None: the profile's
        self.cpu_pace = CpuPace() if pace_cpu else None
        # a split's CPU share against its part of a whole CPU expert, as the runtime's own splits find it
        self.split_pace = CpuPace(relax_weight=SPLIT_RELAX) if pace_cpu and self._rates[5] > 0 else None
        self._link_free_at = 0.0  # perf_counter() time when the copies started so far should end
        self.step = -1
        self.request = 0
        self.position = 0
        self._pass_tokens = 0
        self._pass_started: float | None = None
        self._pass_is_decode = False
        self._layers: list[LayerPass] = []  # of the pass in progress
        self.recorder = None  # a runtime.record.Recorder while recording
        self.routing: Routing | None = None  # trace-forced routing, when set
        self.graphs = graphs  # the model's decode graphs (runtime.graphs); None: decode eagerly
        self._decode_reads = DecodeReads(device)
        for layer, module in layers:  # weakly: ``del model.expertcache`` frees the slot pool, before any next attach
            module._expertcache = (weakref.ref(self), layer)

    @property
    def scratch_slot(self) -> int | None:
        """A slot no cache state refers to (a staging slot), or None when there is none."""
        return self._staging[0] if self._staging else None

    @contextmanager
    def decided_by(self, decider, miss_path: int = CPU_ONLY) -> Iterator[None]:
        """Let ``decider`` (an ``access_many`` face) decide every access, misses where ``miss_path``
        says (``schedule.CPU_ONLY``, ``GPU_ONLY``), for a while: calibration times the layers
        around fixed placements. Nothing is recorded, and the passes count in ``stats`` only
        while it lasts."""
        saved = self.cache, self._miss_path, self.recorder, self.stats
        self.cache, self._miss_path, self.recorder, self.stats = decider, miss_path, None, RuntimeStats(self.stats.num_layers)
        try:
            yield
        finally:
            self.cache, self._miss_path, self.recorder, self.stats = saved

    # -- passes and requests ---------------------------------------------------------------
    def begin_request(self, request: int) -> None:
        """Start a new prompt: positions count from zero again; the cache stays warm."""
        self.end_pass()
        self.request = request
        self.position = 0

    def end_pass(self) -> float | None:
        """Close the forward pass in progress, if any: resolve its timings, count, record. Returns
        when it ended (``time.perf_counter()``), None when no pass was open."""
        if self._pass_started is None:
            return None
        if self.device.type == "cuda":
            # the pass's own work only: copies into slots may run on into the next pass, as the
            # simulator lets them (a device-wide wait would drain the link at every token)
            torch.cuda.current_stream(self.device).synchronize()
        ended = time.perf_counter()
        wall = ended - self._pass_started
        for record in self._layers:
            record.gpu_s += sum(start.elapsed_time(end) for start, end in record.gpu_events) / 1e3
            record.copy_wait_s = sum(before.elapsed_time(after) for before, after in record.wait_events) / 1e3
            self.stats.copy_waits += len(record.wait_events)
            record.gpu_events, record.wait_events = [], []
            self.stats.layer_gpu_s[record.layer] += record.gpu_s
            self.stats.layer_cpu_s[record.layer] += record.cpu_s
            self.stats.copy_wait_s += record.copy_wait_s
            self.stats.output_queue_s += record.output_queue_s
            if self._pass_is_decode and not math.isnan(record.wall_s):  # timed: not the pass's last MoE layer
                self.stats.add_layer_time(record.kind, record.wall_s, record.planned_s, record.host_s)
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
        return ended

    def drain(self) -> None:
        """Wait for the copies still on the link. A pass ends when its own work does, and copies into
        slots may run on into the next one; whoever hands the GPU to other work (another system, a
        measurement) drains first, so that those copies land in this run."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _begin_pass(self, tokens: int) -> None:
        after_decode = self._pass_is_decode and self._pass_started is not None
        ended = self.end_pass()
        self.step += 1
        self._pass_tokens = tokens
        self._pass_is_decode = self.position > 0 and tokens == 1
        # between two decode passes nothing goes untimed: closing the last one (reading its GPU
        # timings, recording it) held the host as much as generating the next token did
        self._pass_started = ended if after_decode and self._pass_is_decode else time.perf_counter()

    # -- one MoE layer -----------------------------------------------------------------------
    def forward(
        self, module: nn.Module, layer: int, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The layer's experts' weighted sum for ``hidden``, into ``out`` when given. While the
        model's decode graphs capture a layer, nothing runs: the capture is cut here (``runtime.graphs``)."""
        if self.graphs is not None and self.graphs.capturing:
            return self.graphs.cut(module, layer, hidden, top_k_index, top_k_weights)
        tokens, top_k = top_k_index.shape
        if layer == self.moe_layers[0]:
            self._begin_pass(tokens)
        stream = compute_stream(self.device)
        index, weights, hidden_cpu = self._routing_of(layer, tokens, top_k_index, top_k_weights, hidden, stream)
        routed_at = time.perf_counter()
        if self._layers:  # the previous MoE layer of this pass ends where this one's routing is known
            previous = self._layers[-1]
            previous.wall_s = routed_at - previous.routed_at
            dense = float(self._dense_s[min(tokens, PRICED_TOKENS)])
            between = (layer - previous.layer) * dense  # the host's next dense work hides some of the GPU's
            previous.planned_s = max(previous.host_free_s, previous.expert_s - min(self._rates[7], dense)) + between
        flat = index.reshape(-1)
        hit, slot, _ = self.cache.access_many(np.full(flat.shape, layer), flat, weights.reshape(-1), self.step)
        self.stats.layer_hits[layer] += int(hit.sum())
        self.stats.layer_misses[layer] += int((~hit).sum())
        self.stats.bypassed += int((~hit & (slot < 0)).sum())
        record = LayerPass(layer, index, weights, hit, slot, routed_at=routed_at)
        self._layers.append(record)

        plan = self._plan(index, hit, slot)
        record.kind, record.expert_s, record.host_free_s, record.cpu_priced_s = plan.kind, plan.expert_s, plan.host_free_s, plan.cpu_priced_s
        record.split_share = plan.split[0].gpu_share if plan.split else float("nan")
        # each row's router weight, in the dtype the router gave it, gathered on the host (one copy,
        # no kernels), queued before the experts' copies, so that it never waits behind them
        row_weights = torch.from_numpy(weights.T.reshape(-1)[plan.rows]).to(top_k_weights.dtype).to(hidden.device, non_blocking=True)
        # the link next, as the miss rule starts it where the layer is placed; its copies need no input
        cuts = [Cut.of(self.layout, job.gpu_share) for job in plan.split]
        started = self._start_copies(record, plan, cuts)
        # then the CPU's input, before any GPU work is queued ahead of it: the CPU starts at once
        if hidden_cpu is None and (plan.on_cpu or plan.split):
            hidden_cpu = hidden.detach().to("cpu")
        hidden_gpu = self.gpu_input(hidden) if plan.resident or plan.fetched or plan.split else hidden
        rows = LayerRows.of(hidden_gpu, hidden_cpu, plan.rows % tokens, stream)
        outputs = self._run_jobs(module, record, rows, plan, cuts, started)
        staged = sum(1 for job in plan.fetched if job.slot >= self.config.slots)
        self.stats.copies += len(plan.fetched) - staged + len(plan.background)
        self.stats.staged += staged
        self.stats.fetched += len(plan.fetched)
        self.stats.cpu_experts += len(plan.on_cpu)
        self.stats.split += len(plan.split)
        self.stats.copies += sum(1 for job in plan.split if job.slot < self.config.slots)

        # one weighted sum, experts in ascending order as eager adds them
        weighted = torch.cat([outputs[expert] for expert in sorted(outputs)])
        if getattr(module, "has_post_expert_norm", False):
            weighted = module.post_expert_norm(weighted)
        weighted = weighted * row_weights[:, None]
        target = torch.zeros_like(hidden) if out is None else out.zero_()
        token_rows = rows.token_rows if rows.token_rows is not None else self._zeros(len(plan.rows))
        final = target.index_add_(0, token_rows, weighted.to(hidden.dtype))
        record.host_s = time.perf_counter() - routed_at
        return final

    def gpu_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """Where a layer's GPU experts read ``hidden``: for one row, when slots replay their experts
        (``runtime.slot_graphs``), the graphs' input with ``hidden`` copied in; else ``hidden``."""
        if self.slot_graphs is None or len(hidden) != 1:
            return hidden
        return self.slot_graphs.hold(hidden)

    def _zeros(self, count: int) -> torch.Tensor:
        """``count`` zeros on the device, made once: a one-token layer's rows all add into row 0."""
        zeros = self._zero_rows.get(count)
        if zeros is None:
            zeros = self._zero_rows[count] = torch.zeros(count, dtype=torch.long, device=self.device)
        return zeros

    def _routing_of(
        self, layer: int, tokens: int, top_k_index: torch.Tensor, top_k_weights: torch.Tensor, hidden: torch.Tensor, stream: Stream
    ) -> tuple[np.ndarray, np.ndarray, torch.Tensor | None]:
        """The layer's experts and the router weights its output applies, on the host (the weights
        as float32, which holds the router's bf16 or fp16 values exactly); and, for a decode step
        whose misses may run on the CPU, its hidden row there too, read in the same wait
        (``runtime.decode_reads``; a row is 4-8 KB for the shapes benchmarked here, so a layer whose misses
        then all go to the GPU loses little).

        Forced routing still waits for the router's own choice and throws it away: that wait is
        what every real layer pays, and without it the host would queue layers without CPU work
        ahead of the GPU, a speed no real run has (on-demand fetching, which never computes on
        the CPU, would never wait at all)."""
        # the one wait for the GPU in a layer: the routing must be known here
        if tokens == 1:
            wanted = hidden if self._may_compute_on_cpu(layer) else None
            index_read, weights_read, hidden_cpu = self._decode_reads.read([top_k_index, top_k_weights, wanted], stream)
            # copies: the buffers are read into again by the next layer, and records keep these
            index, weights = index_read.numpy().copy(), weights_read.to(torch.float32, copy=True).numpy()
        else:
            index, weights, hidden_cpu = top_k_index.cpu().numpy(), top_k_weights.detach().float().cpu().numpy(), None
        if self.routing is None:
            return index, weights, hidden_cpu
        forced_index, forced_weights = self.routing(layer, self.step, tokens)
        # rounded to the router's dtype, as a real router's weights are
        applied = torch.from_numpy(np.ascontiguousarray(forced_weights, dtype=np.float32)).to(top_k_weights.dtype).view(tokens, -1)
        return np.asarray(forced_index, dtype=np.int64).reshape(tokens, -1), applied.float().numpy(), hidden_cpu

    def _may_compute_on_cpu(self, layer: int) -> bool:
        """Whether a miss of ``layer`` may run on the CPU: not under on-demand fetching, nor in a
        layer whose experts a static placement holds on the GPU."""
        first_slot = getattr(self.cache, "first_slot", None)  # a StaticPlacement's
        return self._miss_path != GPU_ONLY and (first_slot is None or first_slot[layer] < 0)

    def _plan(self, index: np.ndarray, hit: np.ndarray, slot: np.ndarray) -> "LayerPlan":
        """Which experts run from their slots, which are copied and run on the GPU, which run on
        the CPU, which are split (``schedule.split_misses``, the simulator's rule), and which
        slots are refilled behind them."""
        by_rank = index.T.reshape(-1)  # rank-major: the row order eager's torch.where gives
        rows = np.argsort(by_rank, kind="stable")
        # plain Python from here: a decode layer has top_k accesses, too few for numpy's calls to pay
        flat, hits, slots = index.reshape(-1).tolist(), hit.tolist(), slot.tolist()
        first: dict[int, int] = {}  # each expert's first access, in execution order
        for i, expert in enumerate(flat):
            first.setdefault(expert, i)
        # every slot written during this layer is filled once, with the last expert put there
        last_in_slot = {slots[i]: expert for i, expert in enumerate(flat) if not hits[i] and slots[i] >= 0}
        kept = {expert: s for s, expert in last_in_slot.items()}
        plan = LayerPlan(rows=rows)
        missed = []
        for expert, start, end in _runs(by_rank[rows].tolist()):
            i = first[expert]
            if hits[i]:
                plan.resident.append(ExpertJob(expert, slots[i], start, end))
            else:
                missed.append(ExpertJob(expert, kept.get(expert, -1), start, end))
        shares, plan.host_free_s, plan.expert_s, plan.cpu_priced_s = self._place(plan.resident, missed)
        for job, share in zip(missed, shares):
            if share > 0 and job.slot < 0:  # not kept by the policy: through a staging slot
                job.slot = self._staging[self._next_staging % len(self._staging)]
                self._next_staging += 1
            job.gpu_share = share
            (plan.fetched if share == 1 else plan.on_cpu if share == 0 else plan.split).append(job)
        copied = {job.slot for job in plan.fetched + plan.split}
        plan.background = [(s, expert) for s, expert in last_in_slot.items() if s not in copied]
        return plan

    def _place(self, resident: list["ExpertJob"], missed: list["ExpertJob"]) -> tuple[list[float], float, float, float]:
        """For each miss, the share of it computed on the GPU (1: all of it, after its copy;
        0: none), timed from now; when the rule expects the host to be done with the layer and the
        layer's expert work to end; and the CPU work it priced."""
        # floats, whatever the layer holds: an int here would compile split_misses anew, mid-decode
        busy = float(sum(self._gpu_s[min(job.row_count, PRICED_TOKENS)] for job in resident))
        launched = float(len(resident) * self._rates[3])
        if not missed:
            return [], launched, max(busy, launched), 0.0
        rows = np.array([min(job.row_count, PRICED_TOKENS) for job in missed], dtype=np.int64)
        cpu_s = self._cpu_s if self.cpu_pace is None else self._cpu_s[: rows.max() + 1] * self.cpu_pace.scale
        if self.split_pace is not None:
            self._rates[8] = self.split_pace.scale
        admitted = np.array([job.slot >= 0 for job in missed])
        gpu_share, copy_end, spent = np.zeros(len(missed)), np.zeros(len(missed)), np.zeros(4)
        now = time.perf_counter()
        gpu_end, cpu_end, link_free = split_misses(
            rows, admitted, len(rows), self._miss_path, 0.0, max(busy, launched), max(0.0, self._link_free_at - now), launched,
            cpu_s, self._gpu_s, self._rates, gpu_share, copy_end, spent,
        )  # fmt: skip
        self._link_free_at = now + link_free
        shares = gpu_share.tolist()
        path_s = self._rates[4] if min(shares) < 1 else 0.0  # the CPU path's cost, in the rule's CPU-busy time
        return shares, cpu_end, max(gpu_end, cpu_end), float(spent[0] - path_s)

    def _run_on_gpu(self, module, record: LayerPass, rows: "LayerRows", jobs: list["ExpertJob"], outputs, copy_first: bool = False,
                    copied: set[int] = frozenset()) -> None:  # fmt: skip
        """Queue ``jobs`` on the GPU; with ``copy_first`` each one's copy, unless started already
        (its index in ``copied``), is started just before its kernels, so a staging slot is
        refilled only after the kernels reading it are queued."""
        if jobs:
            self._timed_on_gpu(record, rows.stream, lambda: self._queue_jobs(module, record, rows, jobs, outputs, copy_first, copied))

    def _queue_jobs(self, module, record: LayerPass, rows: "LayerRows", jobs: list["ExpertJob"], outputs, copy_first: bool, copied: set[int]) -> None:
        for i, job in enumerate(jobs):
            if copy_first and i not in copied:
                self.pool.fill(job.slot, self.host[record.layer][job.expert])
            replay = job.slot not in rows.replayed  # a slot's graph output is read once per layer
            rows.replayed.add(job.slot)
            outputs[job.expert] = self.queue_gpu_expert(module, rows.on_gpu(job), job.slot, rows.stream, record.wait_events, replay)

    def queue_gpu_expert(
        self, module: nn.Module, rows: torch.Tensor, slot: int, stream: Stream, waits: list | None = None, replay: bool = True
    ) -> torch.Tensor:
        """The expert in ``slot`` applied to ``rows``, queued on ``stream`` (the layer's
        ``compute_stream``) after its copy lands (``SlotPool.acquire``); what calibration times as
        the host's cost of one GPU expert.
        Rows in the slot graphs' input (``gpu_input``) replay the slot's graph, unless ``replay``
        is False: its output would overwrite one the layer has yet to read."""
        self.pool.acquire(slot, stream, waits)
        if replay and self.slot_graphs is not None and rows is self.slot_graphs.input:
            out = self.slot_graphs.replay(slot)
        else:
            out = expert_ffn(module, rows, self._slot_views[slot])
        self.pool.release(slot, stream)
        return out

    def queue_split_expert(
        self, module: nn.Module, layer: int, expert: int, rows: torch.Tensor, rows_on_host: torch.Tensor, slot: int, gpu_share: float
    ) -> float:
        """``expert`` of ``layer`` applied to ``rows`` (and their host copy, which a layer makes once
        for all its CPU work) split at ``gpu_share`` through ``slot``, as a layer's last miss runs:
        queued on the GPU, its CPU share computed. Returns the CPU share's seconds: calibration times
        the host's cost of a split besides them."""
        record = LayerPass(layer, np.zeros((0, 0)), np.zeros((0, 0)), np.zeros(0, dtype=bool), np.zeros(0))
        plan = LayerPlan(rows=np.arange(len(rows)), split=[ExpertJob(expert, slot, 0, len(rows), gpu_share)])
        cuts = [Cut.of(self.layout, gpu_share)]
        started = self._start_copies(record, plan, cuts)
        self._run_jobs(module, record, LayerRows.of(rows, rows_on_host, plan.rows, compute_stream(self.device)), plan, cuts, started)
        return record.cpu_s

    def _run_jobs(
        self, module, record: LayerPass, rows: "LayerRows", plan: "LayerPlan", cuts: list[Cut], started: "StartedCopies"
    ) -> dict[int, torch.Tensor]:
        """Every expert of ``plan`` applied to its rows (each split at its ``cuts``), each output on
        the device by expert: the GPU's side queued first (``_queue_gpu_work``, behind the copies
        ``_start_copies`` ``started``), then the CPU computes its work, then the CPU's results and
        each split's output projection are queued.

        (A second host thread queueing the kernels while this one computed, measured on the lent
        H100 host, gained 0-5 % on Mixtral-8x7B and lost 0-9 % on Phi-3.5-MoE: the two threads
        contend for Python's lock, BENCHMARKS.md session 15.)"""
        outputs, gpu_parts, split_copies = self._queue_gpu_work(module, record, rows, plan, cuts, started)
        on_host = {}
        one_row_s, one_row_splits = [], []  # decode's CPU experts' seconds, and its splits' (with their part), for the paces
        for job, cut in zip(plan.split, cuts):
            on_host[job.expert], seconds = self._cpu_share(module, record, rows, job, cut)
            if job.row_count == 1:
                one_row_splits.append((seconds, 1 - cut.gpu_fraction(self.layout)))
        for job in plan.on_cpu:
            on_host[job.expert], seconds = self._cpu_share(module, record, rows, job)
            if job.row_count == 1:
                one_row_s.append(seconds)
        if self.cpu_pace is not None:
            self._pace(plan, one_row_s, one_row_splits)
        for job in plan.on_cpu:
            outputs[job.expert] = self._to_device(record, on_host[job.expert])
        for job, cut, gpu_part, (_, down_landed) in zip(plan.split, cuts, gpu_parts, split_copies):
            outputs[job.expert] = self._finish_split(record, rows, job, cut, gpu_part, down_landed, on_host[job.expert])
        return outputs

    def _pace(self, plan: "LayerPlan", one_row_s: list[float], one_row_splits: list[tuple[float, float]]) -> None:
        """Tell the CPU pace (``runtime.cpu_pace``) what the layer's one-row CPU experts took against
        the profile's one-token price, slowed as the rule prices them while the layer's copies read
        host memory too; or, when the layer's misses all went to the GPU, that nothing was measured.
        Tell the split pace what each one-row split's CPU share took against its part of a whole
        expert at that pace (always beside its copy); or, when the layer had misses but split none,
        that nothing was measured."""
        contention = self._rates[1] if plan.fetched or plan.split or plan.background else 1.0
        for seconds in one_row_s:
            self.cpu_pace.observe(seconds, self._cpu_s[1] * contention)
        if plan.fetched and not (plan.on_cpu or plan.split):
            self.cpu_pace.relax()
        if self.split_pace is None:
            return
        for seconds, part in one_row_splits:
            self.split_pace.observe(seconds, part * self._cpu_s[1] * self.cpu_pace.scale * self._rates[1])
        if (plan.fetched or plan.on_cpu) and not plan.split:
            self.split_pace.relax()

    def _start_fetch_copies(self, record: LayerPass, fetched: list["ExpertJob"]) -> set[int]:
        """Start the copies of ``fetched`` in order, each slot's first only: a staging slot the layer
        reads twice is refilled by ``_queue_jobs``, behind the kernels reading it. Returns the
        indices of the jobs whose copies started."""
        copied, slots = set(), set()
        for i, job in enumerate(fetched):
            if job.slot not in slots:
                slots.add(job.slot)
                copied.add(i)
                self.pool.fill(job.slot, self.host[record.layer][job.expert])
        return copied

    def _copy_split(self, record: LayerPass, job: "ExpertJob", cut: Cut) -> SplitCopies:
        """Start the copies of the GPU's slices of a miss shared between the two (``runtime.split``).
        Returns the events of its units and of the output projection landing."""
        host_row = self.host[record.layer][job.expert]
        gpu_units = cut.unit_ranges(self.layout, on_gpu=True)
        units_landed = self.pool.fill(job.slot, host_row, gpu_units) if gpu_units else None
        down_landed = self.pool.fill(job.slot, host_row, cut.down_ranges(self.layout))
        return units_landed, down_landed

    def _copy_splits(self, record: LayerPass, plan: "LayerPlan", cuts: list[Cut]) -> list[SplitCopies]:
        """Start each split's copies (``_copy_split``), under one switch to the copy stream; none
        (and no switch) when the layer splits nothing."""
        if not plan.split:
            return []
        with self.pool.copying():
            return [self._copy_split(record, job, cut) for job, cut in zip(plan.split, cuts)]

    def _start_copies(self, record: LayerPass, plan: "LayerPlan", cuts: list[Cut]) -> "StartedCopies":
        """Start the copies the GPU waits for, where the miss rule starts the link: as soon as the
        layer is placed, before its inputs are made or any kernel is queued (``copies_first``).
        First the fetched misses' (``_start_fetch_copies``), then each split's slices
        (``_copy_split``). A copy into a slot that one of the layer's hits reads must wait until
        their kernels are queued: then no copy starts here, and all start behind those kernels, in
        order (``_queue_gpu_work``). So must a split's copies into a staging slot that a copied miss
        of the layer reads (a layer with more misses on the GPU than there are staging slots)."""
        read = {job.slot for job in plan.resident}
        if not self.copies_first or any(job.slot in read for job in plan.fetched + plan.split):
            return StartedCopies(set(), None)
        if not plan.fetched and not plan.split:
            return StartedCopies(set(), [])
        with self.pool.copying():
            copied = self._start_fetch_copies(record, plan.fetched)
            fetched = {job.slot for job in plan.fetched}
            if any(job.slot in fetched for job in plan.split):
                return StartedCopies(copied, None)
            return StartedCopies(copied, self._copy_splits(record, plan, cuts))

    def _queue_gpu_work(
        self, module, record: LayerPass, rows: "LayerRows", plan: "LayerPlan", cuts: list[Cut], started: "StartedCopies"
    ) -> tuple[dict[int, torch.Tensor], list[torch.Tensor | None], list[SplitCopies]]:
        """The layer's GPU side, behind the copies already ``started``: the kernels of resident
        experts, copied misses (each copy not started yet just before its kernels) and each split's
        GPU units (its copies first, where not started yet), then the copies of kept misses the CPU
        computes (a kept split's CPU slices last), behind those the GPU waits for, in the order the
        miss rule charges them. Returns the GPU experts' outputs by expert, each split's GPU units'
        activations (None when the CPU has them all) and each split's copy events."""
        outputs: dict[int, torch.Tensor] = {}
        self._run_on_gpu(module, record, rows, plan.resident, outputs)
        self._run_on_gpu(module, record, rows, plan.fetched, outputs, copy_first=True, copied=started.fetched)
        split_copies = self._copy_splits(record, plan, cuts) if started.split is None else started.split
        gpu_parts = [self._split_units(module, record, rows, job, cut, units_landed)
                     for job, cut, (units_landed, _) in zip(plan.split, cuts, split_copies)]  # fmt: skip
        kept_splits = [(job, cut) for job, cut in zip(plan.split, cuts) if job.slot < self.config.slots]
        if plan.background or kept_splits:
            with self.pool.copying():
                for s, expert in plan.background:
                    self.pool.fill(s, self.host[record.layer][expert])
                for job, cut in kept_splits:  # its CPU's slices follow, so the next token hits
                    self.pool.fill(job.slot, self.host[record.layer][job.expert], cut.unit_ranges(self.layout, on_gpu=False))
        return outputs, gpu_parts, split_copies

    def _split_units(self, module, record: LayerPass, rows: "LayerRows", job: "ExpertJob", cut: Cut, units_landed: Landed) -> torch.Tensor | None:
        """The GPU's units of a miss shared between the two (``runtime.split``), computed once
        their slices land; None when the CPU has them all. For one row in the slot graphs' input,
        replayed from the slot's graph, which computes every unit (``SlotGraphs.replay_units``)."""
        if cut.units == 0:
            return None
        self.pool.acquire(job.slot, rows.stream, record.wait_events, units_landed)
        graphs = self._split_graphs(rows)
        if graphs is not None:
            return self._timed_on_gpu(record, rows.stream, lambda: graphs.replay_units(job.slot))
        on_gpu, weights = rows.on_gpu(job), self._slot_views[job.slot]
        return self._timed_on_gpu(record, rows.stream, lambda: units_out(module, on_gpu, weights, 0, cut.units))

    def _finish_split(
        self, record: LayerPass, rows: "LayerRows", job: "ExpertJob", cut: Cut, gpu_part: torch.Tensor | None, down_landed: Landed,
        units_cpu: torch.Tensor,
    ) -> torch.Tensor:
        """A split's end, once the CPU's units are computed: their activations (a few KB) go to the
        GPU, which applies the whole output projection; replayed from the slot's graph, the CPU's
        activations overwriting their part of the graphs' row, when the GPU's units were."""
        graphs = self._split_graphs(rows)
        if graphs is not None:
            self._to_device(record, units_cpu, into=graphs.activations[:, cut.units :])
            project = lambda: graphs.replay_down(job.slot)  # noqa: E731
        else:
            parts = ([] if gpu_part is None else [gpu_part]) + [self._to_device(record, units_cpu)]
            weights = self._slot_views[job.slot]
            project = lambda: nn.functional.linear(torch.cat(parts, dim=-1), weights["down_proj"])  # noqa: E731
        self.pool.acquire(job.slot, rows.stream, record.wait_events, down_landed)
        out = self._timed_on_gpu(record, rows.stream, project)
        self.pool.release(job.slot, rows.stream)
        return out

    def _split_graphs(self, rows: "LayerRows") -> SlotGraphs | None:
        """The slot graphs, when they replay a split of this layer: its one row is in their input."""
        graphs = self.slot_graphs
        return graphs if graphs is not None and graphs.splits and rows.hidden is graphs.input else None

    def _cpu_share(
        self, module, record: LayerPass, rows: "LayerRows", job: "ExpertJob", cut: Cut | None = None
    ) -> tuple[torch.Tensor, float]:
        """``job``'s work on the CPU from the expert's host copy: the whole expert, or with ``cut``
        a split's CPU units; and the seconds it took, which are added to ``record.cpu_s``."""
        started = time.perf_counter()
        weights = self.layout.views(self.host[record.layer][job.expert])
        x = rows.on_cpu(job)
        with cpu_products(self.one_row_kernel, x.shape[0]):
            out = expert_ffn(module, x, weights) if cut is None else units_out(module, x, weights, cut.units, cut.intermediate)
        seconds = time.perf_counter() - started
        record.cpu_s += seconds
        return out, seconds

    def _timed_on_gpu(self, record: LayerPass, stream: Stream, queue: Callable[[], torch.Tensor | None]) -> torch.Tensor | None:
        """``queue()``'s result; the GPU time of the work it queues on ``stream`` is added to ``record``."""
        if self.device.type != "cuda":
            started = time.perf_counter()
            out = queue()
            record.gpu_s += time.perf_counter() - started
            return out
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        out = queue()
        end.record(stream)
        record.gpu_events.append((start, end))
        return out

    def _to_device(self, record: LayerPass, cpu_result: torch.Tensor, into: torch.Tensor | None = None) -> torch.Tensor:
        """Queue a CPU result's copy to the GPU (into ``into`` when given), timing the host's part in
        ``record``: from pageable memory the driver may first wait for the compute stream (CUDA's
        API synchronization notes), which holds the layer's GPU experts and their copies."""
        started = time.perf_counter()
        on_device = cpu_result.to(self.device, non_blocking=True) if into is None else into.copy_(cpu_result, non_blocking=True)
        record.output_queue_s += time.perf_counter() - started
        return on_device


@dataclass
class ExpertJob:
    """One expert's work in a layer: its rows are ``LayerPlan.rows[start:end]``."""

    expert: int
    slot: int  # where it is read on the GPU (its cache slot or a staging slot); -1 on the CPU
    start: int
    end: int
    gpu_share: float = 1.0  # of its work, once placed: 1 on the GPU, 0 on the CPU, between: split

    @property
    def row_count(self) -> int:
        return self.end - self.start


@dataclass
class LayerPlan:
    """How one MoE layer runs (``CachedExperts._plan``)."""

    rows: np.ndarray  # rank-major positions (rank * tokens + token), grouped by ascending expert
    resident: list[ExpertJob] = field(default_factory=list)
    fetched: list[ExpertJob] = field(default_factory=list)  # misses copied, then computed on the GPU
    on_cpu: list[ExpertJob] = field(default_factory=list)
    split: list[ExpertJob] = field(default_factory=list)  # the last miss, when computed partly on each side
    background: list[tuple[int, int]] = field(default_factory=list)  # (slot, expert): kept misses run on the CPU
    expert_s: float = 0.0  # when the miss rule expects the layer's expert work to end, from routing
    host_free_s: float = 0.0  # when it expects the host to be done with the layer, from routing
    cpu_priced_s: float = 0.0  # the CPU experts' and split shares' time it priced (slowed under copies)

    @property
    def kind(self) -> str:
        """One of ``stats.LAYER_KINDS``."""
        if self.split:
            return "split"
        if self.fetched and self.on_cpu:
            return "hybrid"
        return "cpu" if self.on_cpu else "gpu" if self.fetched else "hits"


@dataclass
class LayerRows:
    """Each job's input rows (``LayerPlan.rows[job.start:job.end]``), on the GPU and on the host.
    A one-token layer, every decode step's, gathers nothing: each of its experts takes that row."""

    hidden: torch.Tensor
    hidden_cpu: torch.Tensor | None  # the host copy, when the layer computes on the CPU
    token_of_row: np.ndarray  # the token of each of LayerPlan.rows
    token_rows: torch.Tensor | None  # the same on the device; None for one token
    stream: Stream  # where the layer's kernels run (slots.compute_stream), looked up once per layer
    replayed: set[int] = field(default_factory=set)  # slots whose graphs this layer replayed

    @classmethod
    def of(cls, hidden: torch.Tensor, hidden_cpu: torch.Tensor | None, token_of_row: np.ndarray, stream: Stream) -> "LayerRows":
        on_device = None if len(hidden) == 1 else torch.from_numpy(token_of_row).to(hidden.device, non_blocking=True)
        return cls(hidden, hidden_cpu, token_of_row, on_device, stream)

    def on_gpu(self, job: ExpertJob) -> torch.Tensor:
        return self.hidden if self.token_rows is None else self.hidden[self.token_rows[job.start : job.end]]

    def on_cpu(self, job: ExpertJob) -> torch.Tensor:
        if self.token_rows is None:
            return self.hidden_cpu
        return self.hidden_cpu[torch.from_numpy(self.token_of_row[job.start : job.end])]


def _runs(values: list[int]) -> list[tuple[int, int, int]]:
    """(value, start, end) of each run of equal neighbours in ``values``."""
    runs: list[tuple[int, int, int]] = []
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            runs.append((values[start], start, i))
            start = i
    return runs


def expertcache_experts_forward(
    module: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """The function registered as ``experts_implementation="expertcache"``."""
    held, layer = module._expertcache
    runtime = held()
    if runtime is None:
        raise RuntimeError("this model's expert cache was deleted (model.expertcache); attach one again to run it")
    return runtime.forward(module, layer, hidden_states, top_k_index, top_k_weights)


def register() -> None:
    """Make ``experts_implementation="expertcache"`` known to transformers (idempotent)."""
    ExpertsInterface.register(IMPLEMENTATION, expertcache_experts_forward)
    assert IMPLEMENTATION in ALL_EXPERTS_FUNCTIONS
