"""Model directories without downloads: real architectures from transformers configs, random weights.

No machine here can fetch weights, so tests build tiny models of each MoE family and save them
with ``save_pretrained``; everything downstream then goes through the real ``from_pretrained``
path. A small byte-level BPE tokenizer, trained on the spot, is saved beside the model.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

_TINY = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)

TINY_FAMILIES: dict[str, tuple[str, dict]] = {
    "mixtral": ("MixtralConfig", dict(intermediate_size=96, num_local_experts=8, num_experts_per_tok=2)),
    "phimoe": ("PhimoeConfig", dict(intermediate_size=96, num_local_experts=8, num_experts_per_tok=2)),
    "qwen2_moe": ("Qwen2MoeConfig", dict(intermediate_size=96, moe_intermediate_size=48, shared_expert_intermediate_size=96,
                                         num_experts=8, num_experts_per_tok=2)),
    "qwen3_moe": ("Qwen3MoeConfig", dict(intermediate_size=96, moe_intermediate_size=48, num_experts=8,
                                         num_experts_per_tok=2, head_dim=16)),
    "olmoe": ("OlmoeConfig", dict(intermediate_size=48, num_experts=8, num_experts_per_tok=2)),
    "gpt_oss": ("GptOssConfig", dict(intermediate_size=64, num_local_experts=8, num_experts_per_tok=2, head_dim=16,
                                     layer_types=None, max_position_embeddings=131072)),
}  # fmt: skip
"""Family → (transformers config class, its MoE settings at toy size)."""

_CORPUS = [
    "The cache keeps the experts that the next token will want.",
    "def add(a, b):\n    return a + b\n",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "Mixture-of-experts models route every token to a few experts per layer.",
] * 8


def tiny_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a few sentences: real encode/decode, no download."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(_CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<eos>")


def build_tiny_model(family: str, out_dir: str | Path, num_layers: int = 3, seed: int = 0) -> Path:
    """Save a randomly initialised toy model of ``family`` and its tokenizer to ``out_dir``."""
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown family '{family}'; known: {', '.join(TINY_FAMILIES)}")
    class_name, settings = TINY_FAMILIES[family]
    tokenizer = tiny_tokenizer()
    config = getattr(transformers, class_name)(
        vocab_size=len(tokenizer), num_hidden_layers=num_layers, **{**_TINY, **settings},
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _spread_router_logits(model)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _spread_router_logits(model: torch.nn.Module) -> None:
    """Random init gives near-uniform routers; larger router weights make routing token-dependent."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("gate.weight", "router.weight")) and param.dim() == 2:
                param.normal_(0.0, 0.5)


FULL_SHAPES: dict[str, tuple[str, dict]] = {
    "mixtral-8x7b": ("MixtralConfig", dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                           num_attention_heads=32, num_key_value_heads=8, num_local_experts=8,
                                           num_experts_per_tok=2, max_position_embeddings=32768)),
    "phi-3.5-moe": ("PhimoeConfig", dict(vocab_size=32064, hidden_size=4096, intermediate_size=6400, num_hidden_layers=32,
                                         num_attention_heads=32, num_key_value_heads=8, num_local_experts=16,
                                         num_experts_per_tok=2, max_position_embeddings=131072)),
    "olmoe-1b-7b": ("OlmoeConfig", dict(vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
                                        num_attention_heads=16, num_key_value_heads=16, num_experts=64,
                                        num_experts_per_tok=8, max_position_embeddings=4096)),
    "qwen3-30b-a3b": ("Qwen3MoeConfig", dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                                             moe_intermediate_size=768, num_hidden_layers=48, num_attention_heads=32,
                                             num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8,
                                             max_position_embeddings=40960)),
}  # fmt: skip
"""Published architectures (their configs on the Hugging Face Hub), for weightless benchmarks."""

_BLOCK = 1 << 24
"""Elements of the random block that synthesized expert weights are tiled from."""


def full_size_config(shape: str, num_layers: int | None = None):
    if shape not in FULL_SHAPES:
        raise ValueError(f"unknown shape '{shape}'; known: {', '.join(FULL_SHAPES)}")
    class_name, settings = FULL_SHAPES[shape]
    if num_layers is not None:
        settings = {**settings, "num_hidden_layers": num_layers}
    return getattr(transformers, class_name)(**settings, tie_word_embeddings=False)


def build_full_size(
    shape: str, num_layers: int | None = None, device: str = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 0
) -> tuple[torch.nn.Module, dict[int, torch.Tensor], int]:
    """A full-size architecture with synthesized weights, ready for ``loader.attach``.

    Returns (model with dense weights on ``device`` and emptied experts modules, host expert rows
    per layer (pinned when ``device`` is CUDA), top_k). Nothing is ever initialised with
    ``normal_`` on the host: experts are tiled from one random block (a 47 B-parameter model
    takes minutes instead of an hour), dense weights are drawn on the device.
    """
    from expertcache.runtime.experts import ExpertLayout, find_experts_modules
    from expertcache.runtime.offload import IMPLEMENTATION, register
    from expertcache.runtime.pinned import check_host_memory, host_rows

    register()
    config = full_size_config(shape, num_layers)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, experts_implementation=IMPLEMENTATION)
    experts = find_experts_modules(model)
    needed = sum(module.num_experts * ExpertLayout.of(module).numel * dtype.itemsize for _, _, module in experts)
    check_host_memory(needed, f"the experts of {len(experts)} {shape} layers")
    block = _random_block(seed, dtype)
    pin = torch.device(device).type == "cuda"
    host = {}
    for layer, _, module in experts:
        layout = ExpertLayout.of(module)
        rows = host_rows(module.num_experts, layout.numel, dtype, pin)
        _tile(rows.view(-1), block)
        layout.release(module)
        host[layer] = rows
    model.to_empty(device=device)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.numel() == 0:
                continue
            if param.dim() == 1:
                param.fill_(1.0 if "norm" in name else 0.0)
            else:
                param.normal_(0.0, 0.02)
    _rebuild_buffers(model, device)
    return model, host, config.num_experts_per_tok


def _random_block(seed: int, dtype: torch.dtype) -> torch.Tensor:
    return (torch.randn(_BLOCK, generator=torch.Generator().manual_seed(seed)) * 0.02).to(dtype)


def _tile(flat: torch.Tensor, block: torch.Tensor) -> None:
    """Fill a flat tensor with copies of ``block``: synthesized weights at memcpy speed."""
    for start in range(0, flat.numel(), len(block)):
        width = min(len(block), flat.numel() - start)
        flat[start : start + width].copy_(block[:width])


def _rebuild_buffers(model: torch.nn.Module, device: str) -> None:
    """``to_empty`` leaves buffers (rotary frequencies) uninitialised: rebuild their modules."""
    for module in model.modules():
        if module._buffers and hasattr(module, "config"):
            fresh = type(module)(module.config)
            for name, buffer in fresh.named_buffers(recurse=False):
                module._buffers[name] = buffer.to(device)


def save_full_size(shape: str, out_dir: str | Path, num_layers: int | None = None, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Path:
    """Write a full-size architecture with synthesized weights as a model directory, so the real
    ``from_pretrained`` path (and tools that read model directories) can be measured on it.
    Every parameter is tiled from one random block: fast, and never ``normal_`` on the host."""
    config = full_size_config(shape, num_layers)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.to_empty(device="cpu")
    block = _random_block(seed, dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.fill_(1.0 if "norm" in name else 0.0)
            else:
                _tile(param.view(-1), block)
    _rebuild_buffers(model, "cpu")
    out = Path(out_dir)
    model.save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out
