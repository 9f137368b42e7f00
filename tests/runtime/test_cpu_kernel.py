"""The kernel of one-row CPU experts: switched per product, chosen by timing both, kept in the profile."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from expertcache.errors import ConfigError
from expertcache.runtime.cpu_kernel import cpu_products, faster_one_row_kernel
from expertcache.simulator.costs import ONEDNN, TORCH, Profile, load_profile


def test_torchs_kernel_is_used_for_one_row_only_and_the_flag_comes_back():
    assert torch.backends.mkldnn.enabled
    with cpu_products(TORCH, 1):
        assert not torch.backends.mkldnn.enabled
    assert torch.backends.mkldnn.enabled
    for kernel, rows in [(TORCH, 2), (ONEDNN, 1)]:  # more rows, or torch's choice: oneDNN stays on
        with cpu_products(kernel, rows):
            assert torch.backends.mkldnn.enabled
    with pytest.raises(ValueError), cpu_products(TORCH, 1):
        raise ValueError("an expert that fails")
    assert torch.backends.mkldnn.enabled


def test_both_kernels_give_a_bf16_expert_within_its_rounding():
    torch.manual_seed(0)
    gate_up, down = torch.randn(2 * 256, 128, dtype=torch.bfloat16), torch.randn(128, 256, dtype=torch.bfloat16)
    x = torch.randn(1, 128, dtype=torch.bfloat16)

    def expert() -> torch.Tensor:
        gate, up = torch.nn.functional.linear(x, gate_up).chunk(2, dim=-1)
        return torch.nn.functional.linear(torch.nn.functional.silu(gate) * up, down).float()

    outputs = {}
    for kernel in (ONEDNN, TORCH):
        with cpu_products(kernel, 1):
            outputs[kernel] = expert()
    assert torch.allclose(outputs[TORCH], outputs[ONEDNN], rtol=2e-2, atol=2e-2 * outputs[ONEDNN].abs().max().item())


@pytest.mark.parametrize("slow", [ONEDNN, TORCH])
def test_the_faster_kernel_is_chosen(slow):
    def run() -> None:  # a product that takes longer on one kernel, as the flag it runs under says
        if torch.backends.mkldnn.enabled == (slow == ONEDNN):
            time.sleep(0.002)

    kernel, seconds = faster_one_row_kernel(run, samples=4, seconds=0.0)
    assert kernel != slow and 0 <= seconds < 0.002


def test_a_profile_keeps_its_kernels_and_refuses_unknown_ones(tmp_path):
    profile = replace(load_profile("h100"), one_row_kernel={15: TORCH, 16: ONEDNN})  # measured at 15 and 16 threads
    profile.to_json(tmp_path / "p.json")
    read = Profile.from_json(tmp_path / "p.json")
    assert read.one_row_kernel == {15: TORCH, 16: ONEDNN}  # thread counts read back as ints
    # the kernel measured at the thread count that prices a run
    assert [read.one_row_kernel_at(threads) for threads in (8, 15, 16)] == [TORCH, TORCH, ONEDNN]
    assert load_profile("h100").one_row_kernel_at(15) == ONEDNN  # none measured: torch's choice
    with pytest.raises(ConfigError, match="one_row_kernel names one of onednn, torch"):
        replace(profile, one_row_kernel={15: "amx"})
