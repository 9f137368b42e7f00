"""Peer (a) of ``bench``: transformers + accelerate offload, built from the bench's own weights.

What users reach for when a model outgrows the GPU is ``from_pretrained(device_map="auto",
max_memory={0: budget, "cpu": ...})``: transformers sizes the modules, fills the GPU up to the
budget layer by layer, and accelerate's hooks copy every layer kept in host memory to the GPU at
each forward pass. This builds the same model without a checkpoint on disk (Mixtral's 93 GB would
not fit the lent machine's disk): a plain model of the same architecture holding the bench model's
dense weights and its experts, placed and dispatched by accelerate's public functions that
``device_map="auto"`` is built on (transformers wraps them in private helpers whose signatures
change between releases).
"""

from __future__ import annotations

import psutil
import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from expertcache.errors import ConfigError
from expertcache.runtime.experts import ExpertLayout, find_experts_modules


def offloaded_model(model: PreTrainedModel, host: dict[int, torch.Tensor], budget_bytes: int, device: torch.device) -> PreTrainedModel:
    """``model``'s architecture and weights as transformers + accelerate would place them.

    Takes ``host`` over: each layer's expert rows (pinned) become ordinary CPU tensors in the
    parameters' own layout, the way ``from_pretrained`` holds offloaded weights, and the rows
    are freed one layer at a time, so host memory never holds the experts twice.
    """
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    config = type(model.config).from_dict(model.config.to_dict())  # the default experts implementation
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    plain.eval()
    _adopt_experts(plain, host)
    _adopt_dense(plain, model)
    plain.tie_weights()
    # as from_pretrained sizes it before loading: what is free plus what these weights already hold
    held = sum(t.numel() * t.element_size() for t in plain.parameters() if t.device.type == "cpu")
    max_memory = {"cpu": psutil.virtual_memory().available + held}
    if device.type == "cuda":
        max_memory[device.index or 0] = budget_bytes
    unsplit = plain._no_split_modules
    max_memory = get_balanced_memory(plain, max_memory=max_memory, no_split_module_classes=unsplit)
    device_map = infer_auto_device_map(plain, max_memory=max_memory, no_split_module_classes=unsplit)
    if "disk" in device_map.values():
        raise ConfigError("accelerate would offload part of the model to disk: host memory cannot hold it")
    for name, where in device_map.items():  # offloaded layers start from host memory, as when loaded
        if where == "cpu":
            (plain.get_submodule(name) if name else plain).to("cpu")
    dispatch_model(plain, device_map=device_map, skip_keys=getattr(plain, "_skip_keys_device_placement", None))
    return plain


def _adopt_experts(plain: nn.Module, host: dict[int, torch.Tensor]) -> None:
    for layer, _, module in find_experts_modules(plain):
        layout = ExpertLayout.of(module)
        rows = host.pop(layer)
        for name, shape, offset in zip(layout.names, layout.shapes, layout.offsets):
            width = getattr(module, name)[0].numel()
            weights = rows[:, offset : offset + width].reshape(module.num_experts, *shape).contiguous()
            module._parameters[name] = nn.Parameter(weights, requires_grad=False)
        del rows


def _adopt_dense(plain: nn.Module, model: nn.Module) -> None:
    """Share ``model``'s dense parameters and buffers (its experts' were emptied: those stay)."""
    for source, target in ((model.named_parameters(), plain.get_parameter), (model.named_buffers(), plain.get_buffer)):
        for name, tensor in source:
            if tensor.numel() and target(name).is_meta:
                module_name, _, leaf = name.rpartition(".")
                owner = plain.get_submodule(module_name)
                if isinstance(tensor, nn.Parameter):
                    owner._parameters[leaf] = nn.Parameter(tensor.detach(), requires_grad=False)
                else:
                    owner._buffers[leaf] = tensor
