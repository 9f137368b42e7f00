"""The report's figures (matplotlib, no display needed). Each function returns a Figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from expertcache.runtime.stats import LAYER_KINDS  # noqa: E402
from expertcache.simulator.policies import DEFAULT_POLICY, POLICIES  # noqa: E402

POLICY_COLORS = {name: ("#000000" if POLICIES[name].offline_only else plt.get_cmap("tab10")(i)) for i, name in enumerate(POLICIES)}
"""One colour per policy, the same in every figure; the offline bound in black."""


def _panels(count: int, width: float = 5.0, height: float = 3.8) -> tuple[Figure, list]:
    fig, axes = plt.subplots(1, count, figsize=(width * count, height), squeeze=False, constrained_layout=True)
    return fig, list(axes[0])


def popularity_heatmap(numbers: dict[str, dict]) -> Figure:
    """How often each expert was chosen, per MoE layer: skew here is what frequency-based caching feeds on."""
    fig, axes = _panels(len(numbers), width=4.6, height=5.2)
    for ax, (name, entry) in zip(axes, numbers.items()):
        layers = list(entry["popularity"])
        counts = np.array([entry["popularity"][layer] for layer in layers], dtype=float)
        share = counts / counts.sum(1, keepdims=True).clip(min=1)
        image = ax.imshow(share, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set(title=f"{name}\nshare of a layer's choices", xlabel="expert", ylabel="MoE layer")
        ax.set_yticks(range(0, len(layers), max(1, len(layers) // 8)), [layers[i] for i in range(0, len(layers), max(1, len(layers) // 8))])
        fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def reuse_per_layer(numbers: dict[str, dict]) -> Figure:
    """Share of a token's experts reused from the previous token (same layer) and from the previous
    layer (same token), per layer, against what uniform random routing would give."""
    fig, (left, right) = _panels(2, width=5.6)
    for name, entry in numbers.items():
        layers = [int(layer) for layer in entry["per_layer"]]
        token = [entry["per_layer"][str(layer)]["consecutive_token"]["fraction"] for layer in layers]
        token = [np.nan if value is None else value for value in token]
        left.plot(layers, token, marker="o", ms=3, label=name)
        pairs = [layer for layer in layers if "consecutive_layer" in entry["per_layer"][str(layer)]]
        right.plot(pairs, [entry["per_layer"][str(layer)]["consecutive_layer"]["fraction"] for layer in pairs], marker="o", ms=3, label=name)
    any_entry = next(iter(numbers.values()))
    for ax, title in ((left, "consecutive tokens, same layer"), (right, "consecutive layers, same token")):
        ax.axhline(any_entry["consecutive_token"]["chance_fraction"], color="grey", ls="--", label="uniform routing (k/E)")
        ax.set(title=title, xlabel="MoE layer", ylabel="mean |S ∩ S′| / k", ylim=(0, 1))
        ax.legend(fontsize=8)
    return fig


def reuse_distance_histogram(histograms: dict[str, np.ndarray]) -> Figure:
    """Tokens between two choices of the same (layer, expert): mass at 1 is what a cache that keeps
    the last token's experts catches; the tail is what only a large cache catches."""
    fig, (ax,) = _panels(1, width=7.0)
    width = 0.8 / max(len(histograms), 1)
    for i, (name, histogram) in enumerate(histograms.items()):
        distances = np.arange(1, len(histogram))
        share = histogram[1:] / max(histogram[1:].sum(), 1)
        ax.bar(distances + i * width - 0.4 + width / 2, share, width=width, label=name)
    ax.set(xlabel=f"reuse distance in tokens (last bin: ≥ {len(next(iter(histograms.values()))) - 1})", ylabel="share of reuses",
           title="how long until an expert is chosen again at its layer")  # fmt: skip
    ax.legend(fontsize=8)
    return fig


def hit_rate_vs_capacity(curves: dict[str, dict[str, list[tuple[int, float]]]]) -> Figure:
    """Decode hit rate of each policy as the cache grows, fully associative, Belady as the bound."""
    fig, axes = _panels(len(curves), width=5.2)
    for ax, (name, by_policy) in zip(axes, curves.items()):
        for policy, points in by_policy.items():
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", ms=3, label=policy, color=POLICY_COLORS.get(policy),
                    ls="--" if policy == "belady" else "-", lw=2 if policy in ("belady", DEFAULT_POLICY) else 1.2)  # fmt: skip
        ax.set(title=name, xlabel="expert slots (fully associative)", ylabel="decode hit rate", ylim=(0, 1))
        ax.legend(fontsize=8)
    return fig


def sweep_heatmap(results: pd.DataFrame, chosen: tuple[int, int, str] | None = None) -> Figure:
    """Predicted decode tokens/s for every geometry (N × M) and policy, best thread count per cell."""
    best = results.groupby(["policy", "sets", "ways"], as_index=False).tokens_per_s.max()
    best["geometry"] = best.sets.astype(str) + "×" + best.ways.astype(str)
    best["policy"] = best.policy.where(best.policy != "belady", "belady (bound)")
    order = best.drop_duplicates("geometry").sort_values("sets").geometry.tolist()
    table = best.pivot(index="policy", columns="geometry", values="tokens_per_s").reindex(columns=order)
    fig, (ax,) = _panels(1, width=max(6.0, 0.32 * len(order) + 2.5), height=0.45 * len(table) + 2.0)
    image = ax.imshow(table.to_numpy(), aspect="auto", cmap="magma")
    ax.set_xticks(range(len(order)), order, rotation=90, fontsize=7)
    ax.set_yticks(range(len(table)), table.index)
    ax.set(xlabel="geometry (sets × ways)", title="predicted decode tokens/s")
    fig.colorbar(image, ax=ax, shrink=0.8)
    if chosen is not None:
        sets, ways, policy = chosen
        label = f"{sets}×{ways}"
        if label in order and policy in table.index:
            ax.add_patch(plt.Rectangle((order.index(label) - 0.5, list(table.index).index(policy) - 0.5), 1, 1, fill=False, ec="cyan", lw=2.5))
            ax.annotate("chosen", (order.index(label), list(table.index).index(policy)), color="cyan", ha="center", va="center", fontsize=7)
    return fig


def time_breakdown(timing: pd.DataFrame) -> Figure:
    """Per decode token, where the time went: CPU experts, GPU experts, waits for copies, the rest."""
    decode = timing[timing.phase == "decode"]
    per_token = decode.groupby("step").agg(wall=("pass_wall_s", "first"), cpu=("cpu_s", "sum"), gpu=("gpu_s", "sum"), wait=("copy_wait_s", "sum"))
    per_token["other"] = (per_token.wall - per_token.cpu - per_token.gpu - per_token.wait).clip(lower=0)
    fig, (ax,) = _panels(1, width=8.0)
    bottom = np.zeros(len(per_token))
    x = np.arange(len(per_token))
    for column, color in (("cpu", "#d62728"), ("gpu", "#2ca02c"), ("wait", "#ff7f0e"), ("other", "#bbbbbb")):
        values = per_token[column].to_numpy() * 1e3
        ax.bar(x, values, bottom=bottom, width=1.0, color=color, label=column)
        bottom += values
    ax.set(xlabel="decode token", ylabel="ms", title="time per decode token")
    ax.legend(fontsize=8)
    return fig


def layer_kinds(timing: pd.DataFrame) -> Figure:
    """Decode layers by how their misses ran, their measured time (routing to the next layer's routing)
    beside what the runtime's miss rule priced: where a run is slower than the simulator says, the
    kind of layer whose bar outgrows its price is where to look."""
    decode = timing[(timing.phase == "decode") & timing.wall_s.notna()]
    kinds = [kind for kind in LAYER_KINDS if (decode.kind == kind).any()]
    groups = decode.groupby("kind")
    measured = [groups.wall_s.median()[kind] * 1e3 for kind in kinds]
    priced = [groups.planned_s.median()[kind] * 1e3 for kind in kinds]
    fig, (ax,) = _panels(1, width=7.0)
    x = np.arange(len(kinds))
    ax.bar(x - 0.2, measured, width=0.4, color="#1f77b4", label="measured")
    ax.bar(x + 0.2, priced, width=0.4, color="#bbbbbb", label="priced by the miss rule")
    for i, (took, price) in enumerate(zip(measured, priced)):
        if price > 0:  # a profile may price the time outside experts at nothing
            ax.annotate(f"{took / price:.2f}×", (i - 0.2, took), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [f"{kind}\n{(decode.kind == kind).sum():,} layers" for kind in kinds])
    ax.set(ylabel="ms per layer (median)", title="decode layers by how their misses ran")
    ax.legend(fontsize=8)
    return fig


def save(fig: Figure, directory: Path, stem: str) -> dict[str, Path]:
    """Write PNG and SVG; return their paths."""
    paths = {"png": directory / f"{stem}.png", "svg": directory / f"{stem}.svg"}
    fig.savefig(paths["png"], dpi=110)
    fig.savefig(paths["svg"])
    plt.close(fig)
    return paths
