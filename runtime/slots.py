"""The GPU slot pool: N × M preallocated expert rows, filled by copies on their own stream.

A copy into a slot must not start while a kernel still reads the expert it replaces, and a
kernel must not read a slot before its copy lands: two CUDA events per slot guard both. On the
CPU device (tests, CI) the same calls copy synchronously and the events are skipped.

A decode layer makes a dozen of these calls, so they take the compute stream from the caller and
switch to the copy stream once for a batch of a layer's copies (``copying``): on the lent H100 hosts
looking up the current stream held the host 8-12 µs and entering a stream 14-26 µs, against 2-3 µs
for recording an event or waiting on one (``benchmarks/host_calls_gpu.py``, BENCHMARKS.md session 24).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

Stream = torch.cuda.Stream | None
"""The stream kernels reading the slots run on; None on the CPU device."""


def compute_stream(device: torch.device) -> Stream:
    """The current stream of ``device``, where the caller's kernels run; None on the CPU device."""
    return torch.cuda.current_stream(device) if device.type == "cuda" else None


class SlotPool:
    def __init__(self, slots: int, numel: int, dtype: torch.dtype, device: torch.device) -> None:
        self.device = device
        self.buffer = torch.empty(slots, numel, dtype=dtype, device=device)
        self.on_cuda = device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device) if self.on_cuda else None
        self._landed: list[torch.cuda.Event | None] = [None] * slots
        self._released: list[torch.cuda.Event | None] = [None] * slots
        self._copying = False

    @contextmanager
    def copying(self) -> Iterator[None]:
        """Queue the ``fill`` calls inside on the copy stream under one switch to it."""
        if not self.on_cuda or self._copying:
            yield
            return
        self._copying = True
        try:
            with torch.cuda.stream(self.copy_stream):
                yield
        finally:
            self._copying = False

    def fill(self, slot: int, host_row: torch.Tensor, ranges: list[tuple[int, int]] | None = None) -> torch.cuda.Event | None:
        """Start copying one expert (a flat, pinned host row) into ``slot``, or only its element
        ``ranges``; returns the event of this copy landing (None on the CPU device)."""
        spans = ranges if ranges is not None else [(0, host_row.numel())]
        if not self.on_cuda:
            for start, end in spans:
                self.buffer[slot, start:end].copy_(host_row[start:end])
            return None
        with self.copying():
            if self._released[slot] is not None:
                self.copy_stream.wait_event(self._released[slot])
            for start, end in spans:
                self.buffer[slot, start:end].copy_(host_row[start:end], non_blocking=True)
            landed = torch.cuda.Event()
            landed.record(self.copy_stream)
        self._landed[slot] = landed
        return landed

    def acquire(self, slot: int, stream: Stream, waits: list | None = None, landed: torch.cuda.Event | None = None) -> torch.Tensor:
        """The slot's row, for kernels queued on ``stream`` after its copy lands (or after
        ``landed``, one partial copy of ``fill``, when they read only that part).

        When the copy is still in flight and ``waits`` is given, a pair of timing events around
        the wait is appended to it, so the time the GPU stood idle can be read afterwards.
        """
        landed = (landed or self._landed[slot]) if self.on_cuda else None
        if landed is not None:
            if waits is not None and not landed.query():
                before, after = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                before.record(stream)
                stream.wait_event(landed)
                after.record(stream)
                waits.append((before, after))
            else:
                stream.wait_event(landed)
        return self.buffer[slot]

    def release(self, slot: int, stream: Stream) -> None:
        """Mark the point on ``stream`` after which kernels no longer read ``slot``."""
        if self.on_cuda:
            released = torch.cuda.Event()
            released.record(stream)
            self._released[slot] = released
