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
