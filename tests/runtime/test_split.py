"""One expert shared between the two sides computes what the whole expert computes, for each layout."""

from __future__ import annotations

import pytest
import torch
from transformers import GptOssConfig, MixtralConfig, NemotronHConfig
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts
from transformers.models.mixtral.modeling_mixtral import MixtralExperts
from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHExperts

from expertcache.runtime.experts import ExpertLayout, expert_ffn
from expertcache.runtime.split import CUT_STEPS, Cut, least_gpu_share, units_out

HIDDEN, INTERMEDIATE = 16, 24


def experts_module(kind: str) -> torch.nn.Module:
    """A real transformers experts module at toy size, weights drawn at random."""
    torch.manual_seed(0)
    if kind == "gated":  # [gate; up] rows, Mixtral's
        module = MixtralExperts(MixtralConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_local_experts=2))
    elif kind == "ungated":  # up_proj only, NemotronH's
        config = NemotronHConfig(hidden_size=HIDDEN, moe_intermediate_size=INTERMEDIATE, n_routed_experts=2, moe_latent_size=None)
        module = NemotronHExperts(config)
    else:  # stored transposed, with biases: gpt-oss
        module = GptOssExperts(GptOssConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_local_experts=2))
    for param in module.parameters():
        torch.nn.init.normal_(param, std=0.3)
    return module


def row_of(module: torch.nn.Module, layout: ExpertLayout, expert: int) -> torch.Tensor:
    return torch.cat([getattr(module, name)[expert].detach().reshape(-1) for name in layout.names])


@pytest.mark.parametrize("kind, least", [("gated", 1 / 3), ("ungated", 1 / 2), ("transposed", 0.0)])
def test_the_gpu_takes_at_least_the_output_projection_and_transposed_layouts_are_not_cut(kind, least):
    module = experts_module(kind)
    assert least_gpu_share(module, ExpertLayout.of(module)) == pytest.approx(least)


@pytest.mark.parametrize("kind", ["gated", "ungated"])
@pytest.mark.parametrize("share", [0.0, 1 / 3, 0.5, 0.8])
def test_a_split_expert_reads_only_its_ranges_and_computes_the_whole_experts_output(kind, share):
    module = experts_module(kind)
    layout = ExpertLayout.of(module)
    row = row_of(module, layout, 1)
    cut = Cut.of(layout, max(share, least_gpu_share(module, layout)))
    on_gpu = cut.unit_ranges(layout, on_gpu=True) + cut.down_ranges(layout)
    # every element of the row is copied exactly once: the GPU's ranges, then (a kept expert) the CPU's
    copied = torch.zeros(layout.numel, dtype=torch.int64)
    for start, end in on_gpu + cut.unit_ranges(layout, on_gpu=False):
        copied[start:end] += 1
    assert torch.equal(copied, torch.ones_like(copied))
    gpu_bytes = sum(end - start for start, end in on_gpu) / layout.numel
    assert gpu_bytes == pytest.approx(max(share, least_gpu_share(module, layout)), abs=2 / INTERMEDIATE)
    # the GPU side sees only its ranges (the rest NaN), the CPU side the whole host row
    slot = torch.full_like(row, float("nan"))
    for start, end in on_gpu:
        slot[start:end] = row[start:end]
    x = torch.randn(3, HIDDEN)
    activations = torch.cat(
        [units_out(module, x, layout.views(slot), 0, cut.units), units_out(module, x, layout.views(row), cut.units, cut.intermediate)],
        dim=-1,
    )
    out = torch.nn.functional.linear(activations, layout.views(slot)["down_proj"])
    assert torch.allclose(out, expert_ffn(module, x, layout.views(row)), atol=1e-5)


@pytest.mark.parametrize("kind", ["gated", "ungated"])
@pytest.mark.parametrize("share", [0.0, 0.5, 0.8])
def test_every_unit_computed_from_a_partly_copied_slot_then_overwritten_by_the_cpus_keeps_the_output(kind, share):
    # as a split replayed from its slot's graphs computes (runtime.slot_graphs): the GPU's half runs
    # over every unit of a slot whose CPU part was never copied (NaN here), the CPU's units replace
    # theirs in that row, and no NaN reaches the output projection
    module = experts_module(kind)
    layout = ExpertLayout.of(module)
    row = row_of(module, layout, 0)
    cut = Cut.of(layout, max(share, least_gpu_share(module, layout)))
    slot = torch.full_like(row, float("nan"))
    for start, end in cut.unit_ranges(layout, on_gpu=True) + cut.down_ranges(layout):
        slot[start:end] = row[start:end]
    x = torch.randn(1, HIDDEN)
    activations = units_out(module, x, layout.views(slot), 0, cut.intermediate)
    activations[:, cut.units :] = units_out(module, x, layout.views(row), cut.units, cut.intermediate)
    out = torch.nn.functional.linear(activations, layout.views(slot)["down_proj"])
    assert torch.allclose(out, expert_ffn(module, x, layout.views(row)), atol=1e-5)


def test_cuts_fall_on_few_steps_near_the_share_asked_for():
    """Each cut is a new matrix shape for both devices, so cuts take few values (Mixtral's shape)."""
    hidden, intermediate = 4096, 14336
    layout = ExpertLayout(("gate_up_proj", "down_proj"), ((2 * intermediate, hidden), (hidden, intermediate)),
                          (0, 2 * intermediate * hidden), 3 * intermediate * hidden, torch.bfloat16)  # fmt: skip
    shares = torch.linspace(1 / 3, 0.95, 2000).tolist()
    cuts = [Cut.of(layout, share) for share in shares]
    assert len({cut.units for cut in cuts}) <= CUT_STEPS
    for share, cut in zip(shares, cuts):
        gpu_bytes = sum(end - start for start, end in cut.unit_ranges(layout, on_gpu=True) + cut.down_ranges(layout))
        assert cut.gpu_fraction(layout) == gpu_bytes / layout.numel
        assert abs(cut.gpu_fraction(layout) - share) <= 1 / CUT_STEPS
