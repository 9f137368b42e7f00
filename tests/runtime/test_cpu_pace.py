"""The runtime's moving measure of the CPU's expert speed."""

from __future__ import annotations

import pytest

from expertcache.runtime.cpu_pace import WEIGHT, CpuPace


def test_the_scale_moves_towards_measured_over_priced_and_settles_there():
    pace = CpuPace()
    pace.observe(0.012, 0.006)  # twice as slow as priced: one expert moves the scale by its weight
    assert pace.scale == pytest.approx(1 + WEIGHT)
    for _ in range(200):
        pace.observe(0.003, 0.006)
    assert pace.scale == pytest.approx(0.5, abs=1e-4) and pace.observed == 201


def test_an_unpriced_expert_is_not_counted():
    pace = CpuPace()
    pace.observe(0.005, 0.0)
    assert (pace.scale, pace.observed) == (1.0, 0)
