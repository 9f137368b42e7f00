"""The CPU's expert speed as decode finds it, for the miss rule's choices.

Calibration reads the CPU expert once, but the lent H100 hosts' CPUs drift by tens of percent
from one half-minute to the next: one bench calibrated 7.28 ms and then computed its experts in
4.5-5.9 (Mixtral run 23), the next calibrated 6.02 and computed in 8.4-11 (run 24). Priced at
calibration's speed, the rule sends misses the wrong way for a whole run. The runtime times
every whole CPU expert anyway; ``CpuPace`` keeps a moving average of measured over priced for
decode's one-row experts, and the runtime prices the CPU, at every token count, at that scale
when it places a layer's misses.
"""

from __future__ import annotations

from dataclasses import dataclass

WEIGHT = 1 / 16
"""Each CPU expert's share of the average. Decode computes about a hundred CPU experts a second on
the lent hosts, so the average follows a change of speed within a fraction of a second, while one
expert's spread (10-20 %) moves it by about 1 %."""


@dataclass
class CpuPace:
    """Measured over priced time of whole CPU experts, averaged; 1.0 until the first one."""

    scale: float = 1.0
    observed: int = 0

    def observe(self, measured_s: float, priced_s: float) -> None:
        if priced_s <= 0:
            return
        self.observed += 1
        self.scale += WEIGHT * (measured_s / priced_s - self.scale)
