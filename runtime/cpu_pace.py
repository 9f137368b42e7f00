"""The CPU's expert speed as decode finds it, for the miss rule's choices.

Calibration reads the CPU expert once, but the lent H100 hosts' CPUs drift by tens of percent
from one half-minute to the next: one bench calibrated 7.28 ms and then computed its experts in
4.5-5.9 (Mixtral run 23), the next calibrated 6.02 and computed in 8.4-11 (run 24). Priced at
calibration's speed, the rule sends misses the wrong way for a whole run. The runtime times
every whole CPU expert anyway; ``CpuPace`` keeps a moving average of measured over priced for
decode's one-row experts, and the runtime prices the CPU, at every token count, at that scale
when it places a layer's misses.

It learns only from the CPU experts the rule runs, so a scale that prices the CPU too slow for the
rule to run any would never be corrected: one expert's ratio is bounded (``RATIO_BOUNDS``), and each
layer whose misses all went to the GPU eases the scale back towards calibration's (``RELAX``).

A split's CPU share is paced apart, against its part of a whole CPU expert at the whole experts'
pace (``schedule.RATES``' ``split_cpu_scale``): it runs only the first contraction, in two smaller
products, and on the lent H100 hosts Phi-3.5-MoE's shares took 1.2-1.5 times that part where
Mixtral-8x7B's took 0.8-1.0 (BENCHMARKS.md, session 20). Layers with misses but no split ease it
back (``SPLIT_RELAX``): more slowly, as on Phi-3.5-MoE splits and other layers with misses come
about equally often.
"""

from __future__ import annotations

from dataclasses import dataclass

WEIGHT = 1 / 16
"""Each CPU expert's share of the average. Decode computes about a hundred CPU experts a second on
the lent hosts, so the average follows a change of speed within a fraction of a second, while one
expert's spread (10-20 %) moves it by about 1 %."""

RATIO_BOUNDS = (0.25, 4.0)
"""One expert's measured-over-priced ratio is held within these. An expert the OS preempts can take
ten times its price: on a loaded test host one such first expert priced the CPU so slow that the
rule ran no other to correct it."""

RELAX = WEIGHT / 4
"""How far each layer whose misses all went to the GPU moves the scale back towards 1 (calibration's
price). In a run that computes on the CPU such layers are rare, so they barely pull on what the
CPU experts measure; in a run that stopped computing on the CPU, a few tokens bring the CPU back
into the rule's reach, and its experts are measured again."""


SPLIT_RELAX = RELAX / 4
"""``relax_weight`` of the split shares' pace: at it, a shape whose shares take 1.24 times their part
settles within 0.02 of that, and a scale an unlucky spell drove so high that the rule stops
splitting loses two thirds of its excess in 256 layers with misses."""


@dataclass
class CpuPace:
    """Measured over priced time of whole CPU experts (or of splits' CPU shares), averaged; 1.0 until the first one."""

    scale: float = 1.0
    observed: int = 0
    relax_weight: float = RELAX

    def observe(self, measured_s: float, priced_s: float) -> None:
        if priced_s <= 0:
            return
        self.observed += 1
        low, high = RATIO_BOUNDS
        self.scale += WEIGHT * (min(max(measured_s / priced_s, low), high) - self.scale)

    def relax(self) -> None:
        """Nothing of the kind measured in a layer that could have run it: lean towards calibration's price."""
        self.scale += self.relax_weight * (1.0 - self.scale)
