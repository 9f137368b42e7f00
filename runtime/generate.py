"""Greedy generation over a list of prompts with a cached model, one request at a time."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import PreTrainedModel, TextStreamer

from expertcache.errors import ConfigError


def read_prompts(prompt: str | None, prompt_file: str | None, limit: int | None) -> list[str]:
    """Prompts from ``--prompt`` or from a file with one prompt per non-empty line."""
    if (prompt is None) == (prompt_file is None):
        raise ConfigError("give exactly one of --prompt and --prompt-file")
    if prompt is not None:
        prompts = [prompt]
    else:
        path = Path(prompt_file)
        if not path.is_file():
            raise ConfigError(f"{path}: no such prompt file")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    prompts = prompts[:limit] if limit else prompts
    if not prompts:
        raise ConfigError("no prompts to run")
    return prompts


def encode(tokenizer, prompt: str, device: torch.device) -> dict:
    """Token ids for one prompt, through the chat template when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        return {k: v.to(device) for k, v in ids.items()}
    return {k: v.to(device) for k, v in tokenizer(prompt, return_tensors="pt").items()}


def generate_prompts(
    model: PreTrainedModel, tokenizer, prompts: list[str], max_new_tokens: int, stream: bool = True
) -> list[str]:
    """Generate greedily for each prompt as its own request; the expert cache stays warm across them."""
    runtime = model.expertcache
    texts = []
    for request, prompt in enumerate(prompts):
        runtime.begin_request(request)
        inputs = encode(tokenizer, prompt, runtime.device)
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
        with torch.inference_mode():
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            )  # fmt: skip
        runtime.end_pass()
        texts.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return texts


def timed_generate(model, ids: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, float, float]:
    """Greedy ``new_tokens`` after ``ids`` → (tokens, prefill seconds, decode tokens/s).

    For systems timed from outside (no runtime of ours to count passes): one run of a single
    new token is the prefill, the rest of a full run is decode. An untimed warm-up comes first,
    or first-call costs (allocations, kernel selection) would land in the one-token run and be
    subtracted from the decode.
    """
    synchronize = torch.cuda.synchronize if ids.device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=2, do_sample=False)
        synchronize()
        started = time.perf_counter()
        model.generate(ids, max_new_tokens=1, do_sample=False)
        synchronize()
        prefill_s = time.perf_counter() - started
        started = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        synchronize()
    total = time.perf_counter() - started
    return out, prefill_s, (new_tokens - 1) / max(total - prefill_s, 1e-9)
