"""Load any transformers MoE model for cached inference: dense on the GPU, experts on the host.

Sizing happens first, on a weightless (meta-device) copy of the architecture, so a budget that
cannot hold the dense weights and KV cache, or fewer slots than top-k, is refused before a single
byte is allocated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from expertcache.errors import ConfigError
from expertcache.runtime.attention import keep_attention_steady
from expertcache.runtime.experts import ExpertLayout, find_experts_modules
from expertcache.runtime.graphs import route_decode_through_graphs
from expertcache.runtime.kv import reuse_one_cache
from expertcache.runtime.offload import IMPLEMENTATION, STAGING_SLOTS, CachedExperts, register
from expertcache.runtime.pinned import check_host_memory, host_rows
from expertcache.simulator.config import CacheConfig
from expertcache.simulator.costs import Profile, load_profile
from expertcache.simulator.policies import DEFAULT_POLICY, online_policy
from expertcache.units import format_bytes

DEFAULT_WAYS = 8
"""Ways of the geometry chosen when neither a configuration nor sets/ways are given."""


@dataclass(frozen=True)
class MemoryPlan:
    """How a GPU budget splits into dense weights, KV cache, a working reserve, staging slots
    (``offload.STAGING_SLOTS``) and the expert cache's slots."""

    budget_bytes: int
    dense_bytes: int
    kv_bytes: int
    reserve_bytes: int
    staging_bytes: int
    expert_bytes: int
    num_moe_layers: int
    num_experts: int
    top_k: int

    @property
    def slots(self) -> int:
        return max(0, (self.budget_bytes - self.fixed_bytes) // self.expert_bytes)

    @property
    def fixed_bytes(self) -> int:
        """Everything but the cache's slots."""
        return self.dense_bytes + self.kv_bytes + self.reserve_bytes + self.staging_bytes

    @property
    def all_experts(self) -> int:
        return self.num_moe_layers * self.num_experts

    def check(self) -> None:
        if self.fixed_bytes > self.budget_bytes:
            raise ConfigError(
                f"a GPU budget of {format_bytes(self.budget_bytes)} cannot hold the dense weights "
                f"({format_bytes(self.dense_bytes)}), KV cache ({format_bytes(self.kv_bytes)}), working reserve "
                f"({format_bytes(self.reserve_bytes)}) and staging slots ({format_bytes(self.staging_bytes)})"
            )
        if self.slots < self.top_k:
            raise ConfigError(
                f"a GPU budget of {format_bytes(self.budget_bytes)} leaves room for {self.slots} expert slots "
                f"of {format_bytes(self.expert_bytes)}, fewer than top_k = {self.top_k}"
            )


def model_dtype(config, dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype for ``dtype``; "auto" reads it from the model configuration (float32 when absent)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        found = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if isinstance(found, str):
            found = getattr(torch, found)
        return found or torch.float32
    return getattr(torch, dtype)


def _top_k(model: torch.nn.Module, config) -> int:
    for name in ("num_experts_per_tok", "moe_top_k", "top_k", "num_selected_experts"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    for module in model.modules():
        value = getattr(module, "top_k", None)
        if isinstance(value, int) and value > 0:
            return value
    raise ConfigError("cannot tell the model's top-k from its configuration")


def _kv_bytes(config, max_tokens: int, element: int) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = text.num_hidden_layers
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * layers * heads * head_dim * max_tokens * element


def plan_memory(config, budget_bytes: int, max_tokens: int, dtype: torch.dtype, trust_remote_code: bool = False) -> MemoryPlan:
    """Size a budget for this architecture without loading or allocating any weight."""
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    experts = find_experts_modules(skeleton)
    if not experts:
        raise ConfigError(f"{type(skeleton).__name__} has no experts module using transformers' experts interface")
    layout = ExpertLayout.of(experts[0][2])
    element = dtype.itemsize
    total = sum(p.numel() * p.element_size() for p in skeleton.parameters())
    total += sum(b.numel() * b.element_size() for b in skeleton.buffers())
    expert_total = sum(layout.nbytes * m.num_experts for _, _, m in experts)
    return MemoryPlan(
        budget_bytes=budget_bytes,
        dense_bytes=total - expert_total,
        kv_bytes=_kv_bytes(config, max_tokens, element),
        reserve_bytes=int(0.04 * budget_bytes) + 256 * 2**20,
        staging_bytes=STAGING_SLOTS * layout.nbytes,
        expert_bytes=layout.nbytes,
        num_moe_layers=len(experts),
        num_experts=experts[0][2].num_experts,
        top_k=_top_k(skeleton, config),
    )


def default_config(plan: MemoryPlan, policy: str = DEFAULT_POLICY) -> CacheConfig:
    """The largest geometry that fits: every slot used, up to one per expert."""
    slots = min(plan.slots, plan.all_experts)
    ways = min(DEFAULT_WAYS, slots)
    return CacheConfig(sets=slots // ways, ways=ways, policy=policy, budget_bytes=plan.budget_bytes)


def load(
    model_path: str | os.PathLike,
    config: CacheConfig | None = None,
    device: str | torch.device = "cuda",
    gpu_budget: int | None = None,
    max_tokens: int = 4096,
    threads: int | None = None,
    profile: Profile | str | None = None,
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    cuda_graphs: bool = True,
    pace_cpu: bool | None = None,
    policy: str = DEFAULT_POLICY,
) -> PreTrainedModel:
    """Load a local Hugging Face MoE model with its routed experts behind a GPU expert cache.

    >>> model = expertcache.load("Mixtral-8x7B-Instruct", gpu_budget=24 * 2**30)   # doctest: +SKIP
    >>> model.generate(**inputs, max_new_tokens=64)                               # doctest: +SKIP
    >>> model.expertcache.stats.hit_rate                                          # doctest: +SKIP

    ``device="cpu"`` keeps the slot pool on the CPU: the same code path, for tests and CI.
    Without ``config`` the cache is the largest geometry the budget holds, under ``policy``.
    ``cuda_graphs`` and ``pace_cpu``: see ``attach``.
    """
    device = torch.device(device)
    path = Path(model_path)
    hf_config = read_model_config(path, trust_remote_code)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for but this machine has no CUDA GPU; pass --device cpu")
    register()
    torch_dtype = model_dtype(hf_config, dtype)
    if gpu_budget is None:
        if device.type == "cuda":
            gpu_budget = int(torch.cuda.mem_get_info(device)[0] * 0.95)
        else:
            gpu_budget = 2**62  # the CPU device has no budget: the configuration decides
    plan = plan_memory(hf_config, gpu_budget, max_tokens, torch_dtype, trust_remote_code)
    plan.check()
    config = config or default_config(plan, policy)
    if config.slots > plan.slots:
        raise ConfigError(
            f"{config.sets} x {config.ways} = {config.slots} slots do not fit: the budget leaves room for {plan.slots}"
        )
    config.geometry.check_fits(plan.top_k)
    online_policy(config.policy)
    profile = profile if isinstance(profile, Profile) else load_profile(profile)
    check_host_memory(plan.all_experts * plan.expert_bytes, f"the {plan.all_experts} routed experts of {path.name}")
    threads = threads or config.threads or max(1, (os.cpu_count() or 2) - 1)

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch_dtype, experts_implementation=IMPLEMENTATION, trust_remote_code=trust_remote_code
    )
    host = {layer: _move_experts_to_host(module, pin=device.type == "cuda") for layer, _, module in find_experts_modules(model)}
    return attach(model, host, config, device, threads, profile, plan.top_k, cuda_graphs=cuda_graphs, pace_cpu=pace_cpu)


def read_model_config(model_path: str | Path, trust_remote_code: bool = False) -> PretrainedConfig:
    """A local model directory's transformers config. A path that is no model directory, or whose
    config.json transformers cannot read (malformed, an unknown ``model_type``), is refused in one
    line rather than with transformers' traceback."""
    path = Path(model_path)
    if not (path / "config.json").exists():
        raise ConfigError(f"{path}: not a model directory (no config.json)")
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (ValueError, OSError) as error:  # json's decode error is a ValueError
        raise ConfigError(f"{path}: transformers cannot read its config.json: {str(error).splitlines()[0]}") from None


def attach(
    model: PreTrainedModel,
    host: dict[int, torch.Tensor],
    config: CacheConfig,
    device: torch.device,
    threads: int,
    profile: Profile | str | None,
    top_k: int,
    placement: str = "cache",
    cuda_graphs: bool = True,
    pace_cpu: bool | None = None,
) -> PreTrainedModel:
    """Move the dense rest of ``model`` to ``device`` and put its experts behind the cache.

    ``host`` holds each MoE layer's experts as flat rows (see ``ExpertLayout``); the experts
    modules' own parameters must already be emptied. ``placement`` picks expertcache or one of
    the systems it is compared with (``simulator.placements.PLACEMENTS``). From then on torch
    computes on the CPU with ``threads`` threads, and attention runs without SDPA's cuDNN backend
    (``runtime.attention``: it cost decode a graph build per token). ``generate`` decodes into one
    reused static key-value cache (``runtime.kv``), and on a GPU its decode steps replay CUDA
    graphs of the work between the experts (``runtime.graphs``) and of each slot's one-row expert
    (``runtime.slot_graphs``) unless ``cuda_graphs`` is False. With ``pace_cpu`` (by default on a
    GPU) misses are placed at the CPU speed the runtime's own CPU experts show (``runtime.cpu_pace``),
    not at the profile's; on the CPU device the profile's prices stand, as tests set them.
    """
    model.eval()
    torch.set_num_threads(threads)  # the CPU experts run with the thread count they are priced at
    keep_attention_steady(model)
    # a static cache keeps its tensors in place, as graphs need: one, reused by every request;
    # generate would otherwise compile its forward when it sees one
    reuse_one_cache(model)
    model.generation_config.disable_compile = True
    experts = find_experts_modules(model)
    graphs = route_decode_through_graphs(model, [name for _, name, _ in experts])
    layout = ExpertLayout.of(experts[0][2])
    if any(ExpertLayout.of(module) != layout for _, _, module in experts):
        raise ConfigError("the experts modules of this model differ in layout; one slot pool cannot hold them all")
    model.to(device)
    num_layers = max(layer for layer, _, _ in experts) + 1
    if not isinstance(profile, Profile):
        profile = load_profile(profile)
    model.expertcache = CachedExperts(
        [(layer, module) for layer, _, module in experts], host, layout, config, num_layers, device, profile, threads, top_k,
        placement=placement, graphs=graphs if cuda_graphs and device.type == "cuda" else None,
        slot_graphs=cuda_graphs and device.type == "cuda", pace_cpu=device.type == "cuda" if pace_cpu is None else pace_cpu,
    )
    return model


def _move_experts_to_host(module: torch.nn.Module, pin: bool) -> torch.Tensor:
    """One flat row per expert (one copy per fetch), replacing the module's own parameters."""
    layout = ExpertLayout.of(module)
    rows = host_rows(module.num_experts, layout.numel, layout.dtype, pin)
    for name, offset in zip(layout.names, layout.offsets):
        param = getattr(module, name)
        width = param[0].numel()
        rows[:, offset : offset + width].copy_(param.detach().reshape(module.num_experts, width))
    layout.release(module)
    return rows
