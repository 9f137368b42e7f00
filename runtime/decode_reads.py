"""A decode layer's reads from the GPU in one wait: its routing and, where needed, its hidden row.

The host waits for the GPU once per layer, to learn the routing. Reading the router's choice, its
weights and the hidden row as three blocking copies waited three times: 70 µs on the lent H100
host, against 35 µs for three copies queued into pinned memory and one wait
(``benchmarks/host_calls_gpu.py``, BENCHMARKS.md session 24). The pinned buffers are made once per
shape and reused by every layer: torch's pinned allocator frees a block only when no tensor views
it, and a recorder keeps every layer's routing until the run ends. So each read's contents last
until the next read, and callers copy out what they keep.
"""

from __future__ import annotations

import torch


class DecodeReads:
    """Host buffers for a decode step's reads, pinned on a CUDA device."""

    def __init__(self, device: torch.device) -> None:
        self.pin = device.type == "cuda"
        self._buffers: dict[tuple[int, torch.Size, torch.dtype], torch.Tensor] = {}

    def read(self, tensors: list[torch.Tensor | None], stream: torch.cuda.Stream | None) -> list[torch.Tensor | None]:
        """Host copies of ``tensors`` (None stays None), all queued on ``stream`` before one wait for
        it (None: the CPU device, nothing to wait for). Valid until the next ``read``."""
        copies: list[torch.Tensor | None] = []
        for position, tensor in enumerate(tensors):
            if tensor is None:
                copies.append(None)
                continue
            key = (position, tensor.shape, tensor.dtype)
            buffer = self._buffers.get(key)
            if buffer is None:
                with torch.inference_mode(False):  # a normal tensor, written in and outside inference mode alike
                    buffer = self._buffers[key] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=self.pin)
            copies.append(buffer.copy_(tensor.detach(), non_blocking=self.pin))
        if stream is not None:
            stream.synchronize()
        return copies
