"""Page-locked host memory of exactly the size asked for, refused up front when the machine lacks it.

Experts must live in pinned memory (pageable copies ran at 7.1 GB/s on the lent machine against
55 GB/s pinned). torch's pinned allocator rounds every block up to a power of two, so one
Mixtral layer of experts (2.8 GB) would take 4 GB and the whole model 128 GB instead of 90 GB;
registering ordinary memory with the CUDA driver pins exactly what is used. The memory is owned by
a numpy buffer whose finaliser unregisters it before it is freed: memory freed while still
registered would make the next registration at the same address fail (cudaError 712).

Every routed expert lives in host memory, so a model whose experts exceed what the machine has
free would be killed by the kernel part way through loading (a full Mixtral-8x7B shape, 90 GB of
experts, on a 24 GiB machine). ``check_host_memory`` refuses that before the first row is allocated.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

from expertcache.errors import ConfigError
from expertcache.units import format_bytes

_CUDA_HOST_REGISTER_PORTABLE = 1


def host_rows(rows: int, numel: int, dtype: torch.dtype, pin: bool) -> torch.Tensor:
    """An uninitialised [rows, numel] host tensor, page-locked when ``pin``."""
    if not pin:
        return torch.empty(rows, numel, dtype=dtype)
    nbytes = rows * numel * dtype.itemsize
    buffer = np.empty(nbytes, dtype=np.uint8)
    address = buffer.ctypes.data
    status = int(torch.cuda.cudart().cudaHostRegister(address, nbytes, _CUDA_HOST_REGISTER_PORTABLE))
    if status != 0:
        raise RuntimeError(f"pinning {nbytes:,} bytes of host memory failed (cudaError {status})")
    weakref.finalize(buffer, _unregister, address)
    return torch.from_numpy(buffer).view(dtype).view(rows, numel)


def available_host_bytes() -> int | None:
    """Memory the kernel says new allocations can take without swapping (``MemAvailable`` in
    /proc/meminfo); None where it cannot be read (not Linux)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # reported in KiB
    except OSError:
        return None
    return None


def check_host_memory(needed: int, what: str) -> None:
    """Refuse, in one line, to allocate ``needed`` bytes of host rows for ``what`` when the machine
    has less available; where availability cannot be read, allow it."""
    available = available_host_bytes()
    if available is not None and needed > available:
        raise ConfigError(
            f"{what} need {format_bytes(needed)} of host memory; this machine has {format_bytes(available)} available"
        )


def _unregister(address: int) -> None:
    torch.cuda.cudart().cudaHostUnregister(address)
