"""The runtime's moving measure of the CPU's expert speed."""

from __future__ import annotations

import pytest

from expertcache.runtime.cpu_pace import RATIO_BOUNDS, RELAX, SPLIT_RELAX, WEIGHT, CpuPace


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


def test_one_expert_moves_the_scale_by_a_bounded_ratio():
    pace = CpuPace()
    pace.observe(0.120, 0.012)  # preempted: ten times its price, counted as four
    assert pace.scale == pytest.approx(1 + WEIGHT * (RATIO_BOUNDS[1] - 1))


def test_layers_without_cpu_work_lean_back_towards_calibrations_price():
    pace = CpuPace(scale=3.0)
    pace.relax()
    assert pace.scale == pytest.approx(3.0 - RELAX * 2.0)
    for _ in range(400):
        pace.relax()
    assert pace.scale == pytest.approx(1.0, abs=1e-2) and pace.observed == 0


def test_the_split_shares_pace_leans_back_more_slowly():
    whole, split = CpuPace(scale=3.0), CpuPace(scale=3.0, relax_weight=SPLIT_RELAX)
    whole.relax()
    split.relax()
    assert split.scale == pytest.approx(3.0 - SPLIT_RELAX * 2.0) and whole.scale < split.scale < 3.0
