"""CPU threads that stay awake between the runtime's CPU experts.

Decode computes on the CPU in bursts: an expert or two per layer, then a wait for the GPU. With
OpenMP's default wait policy torch's worker threads go to sleep between bursts, and every CPU
expert then first wakes them all. On the lent H100 host (16 cores, 15 threads) that made the
runtime's CPU experts far slower than the same experts back to back, the more so the smaller the
expert: Phi-3.5-MoE 3.8-4.8 against 3.0 ms, OLMoE 0.9-4.3 against 0.46 ms. With the threads spinning
(``OMP_WAIT_POLICY=ACTIVE``) they took 3.1-3.5 and 0.5-1.1 ms, and 8 Phi layers decoded at 28.0
instead of 20.7 tokens/s (``benchmarks/split_ab_gpu.py``, BENCHMARKS.md). The price is cores
kept busy while the process lives, which is why only the commands that run a model ask for it.
"""

from __future__ import annotations

import os
import sys

WAIT_POLICY = "ACTIVE"


def keep_cpu_threads_spinning() -> None:
    """Ask OpenMP to keep its threads spinning, unless the user chose a wait policy. OpenMP reads
    the policy once, when torch loads it, so this must run first; afterwards it does nothing."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
