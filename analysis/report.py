"""`expertcache analyze`: reuse.json, figures (PNG + SVG) and one self-contained report.html.

The report embeds its figures as data URIs and styles itself inline, so it is one file that
opens anywhere, offline, and links nothing outside itself.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from expertcache.analysis import plots
from expertcache.analysis.curves import hit_rate_curves
from expertcache.analysis.reuse import WINDOWS, reuse_distances, reuse_numbers
from expertcache.simulator.config import CacheConfig
from expertcache.traces.io import Trace

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem}th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.note{color:#555;font-size:.92rem;max-width:900px}.above{color:#1a7f37;font-weight:600}.below{color:#b42318}
"""


@dataclass
class Analysis:
    """Everything one report shows."""

    numbers: dict[str, dict]
    figures: dict[str, dict[str, Path]]
    sweep: pd.DataFrame | None = None
    chosen: CacheConfig | None = None


def analyze(
    traces: dict[str, Trace],
    out_dir: str | Path,
    sweep_results: pd.DataFrame | None = None,
    chosen: CacheConfig | None = None,
    timing: pd.DataFrame | None = None,
    capacities: list[int] | None = None,
) -> Path:
    """Compute, plot and write everything; returns the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    numbers = {name: reuse_numbers(trace) for name, trace in traces.items()}
    (out / "reuse.json").write_text(json.dumps(numbers, indent=1) + "\n")
    figures = {
        "popularity": plots.save(plots.popularity_heatmap(numbers), out, "popularity"),
        "reuse_per_layer": plots.save(plots.reuse_per_layer(numbers), out, "reuse_per_layer"),
        "reuse_distance": plots.save(
            plots.reuse_distance_histogram({name: reuse_distances(trace) for name, trace in traces.items()}), out, "reuse_distance"
        ),
        "hit_rate_vs_capacity": plots.save(
            plots.hit_rate_vs_capacity({name: hit_rate_curves(trace, capacities) for name, trace in traces.items()}),
            out, "hit_rate_vs_capacity",
        ),
    }  # fmt: skip
    if sweep_results is not None:
        mark = (chosen.sets, chosen.ways, chosen.policy) if chosen else None
        figures["sweep"] = plots.save(plots.sweep_heatmap(sweep_results, mark), out, "sweep")
    if timing is not None:
        figures["time_breakdown"] = plots.save(plots.time_breakdown(timing), out, "time_breakdown")
        if "kind" in timing:  # recorded since layers are timed by kind
            figures["layer_kinds"] = plots.save(plots.layer_kinds(timing), out, "layer_kinds")
    report = out / "report.html"
    report.write_text(render(Analysis(numbers, figures, sweep_results, chosen)))
    return report


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _verdict(value: float | None, chance: float) -> str:
    if value is None:
        return "–"
    css, word = ("above", "above chance") if value > chance * 1.05 else ("below", "at or below chance")
    return f'<span class="{css}">{word}</span>'


def _summary_table(numbers: dict[str, dict]) -> str:
    rows = []
    for name, n in numbers.items():
        ct, cl = n["consecutive_token"], n["consecutive_layer"]
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{n['decode_tokens']:,}</td>"
            f"<td>{_percent(ct['any'])}</td><td>{_percent(ct['fraction'])}</td><td>{ct['chance_any']:.1%} / {ct['chance_fraction']:.1%}</td>"
            f"<td>{_verdict(ct['fraction'], ct['chance_fraction'])}</td>"
            f"<td>{_percent(cl['any'])}</td><td>{_percent(cl['fraction'])}</td><td>{_verdict(cl['fraction'], cl['chance_fraction'])}</td>"
            + "".join(f"<td>{_percent(n['window'][str(w)])} <small>({n['window_chance'][str(w)]:.0%})</small></td>" for w in WINDOWS)
            + "</tr>"
        )
    head = (
        "<tr><th rowspan=2>trace</th><th rowspan=2>decode tokens</th><th colspan=4>consecutive tokens, same layer</th>"
        "<th colspan=3>consecutive layers, same token</th><th colspan=4>window: share of S(t) in the last w tokens (chance)</th></tr>"
        "<tr><th>any</th><th>fraction</th><th>chance any / fraction</th><th></th><th>any</th><th>fraction</th><th></th>"
        + "".join(f"<th>w = {w}</th>" for w in WINDOWS) + "</tr>"
    )  # fmt: skip
    return f"<table>{head}{''.join(rows)}</table>"


def _per_layer_table(name: str, n: dict) -> str:
    rows = "".join(
        f"<tr><td>{layer}</td><td>{_percent(e['consecutive_token']['any'])}</td><td>{_percent(e['consecutive_token']['fraction'])}</td>"
        f"<td>{_percent(e.get('consecutive_layer', {}).get('fraction'))}</td>"
        + "".join(f"<td>{_percent(e['window'][str(w)])}</td>" for w in WINDOWS) + "</tr>"
        for layer, e in n["per_layer"].items()
    )  # fmt: skip
    head = "<tr><th>layer</th><th>token any</th><th>token fraction</th><th>layer→next fraction</th>" + "".join(
        f"<th>window {w}</th>" for w in WINDOWS
    ) + "</tr>"
    return f"<details><summary>per layer: {html.escape(name)}</summary><table>{head}{rows}</table></details>"


def render(analysis: Analysis) -> str:
    figures = analysis.figures
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>expertcache report</title><style>{_STYLE}</style></head><body>",
        "<h1>Expert reuse and cache configuration</h1>",
        f"<p class='note'>Traces: {', '.join(html.escape(n) for n in analysis.numbers)}. Generated "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by expertcache. Only decode positions count; pairs never cross "
        "requests. <em>Chance</em> is what independent uniform routing would give: 1 − C(E−k, k)/C(E, k) for “any”, "
        "k/E for “fraction”. Reuse above chance is what caching and prefetching can exploit.</p>",
        "<h2>Reuse at a glance</h2>",
        _summary_table(analysis.numbers),
        "".join(_per_layer_table(name, n) for name, n in analysis.numbers.items()),
        "<h2>Reuse per layer</h2>",
        _image(figures["reuse_per_layer"]["png"], "reuse per layer"),
        "<h2>Which experts are popular</h2>",
        _image(figures["popularity"]["png"], "expert popularity"),
        "<h2>How soon experts come back</h2>",
        _image(figures["reuse_distance"]["png"], "reuse distance"),
        "<h2>Hit rate against cache size</h2>",
        "<p class='note'>Fully associative caches; Belady's offline optimum is the dashed bound no policy can pass.</p>",
        _image(figures["hit_rate_vs_capacity"]["png"], "hit rate against capacity"),
    ]
    if "sweep" in figures:
        parts += ["<h2>Sweep: predicted decode tokens/s</h2>", _image(figures["sweep"]["png"], "sweep heatmap")]
        best = analysis.sweep.sort_values("tokens_per_s", ascending=False).head(10)
        parts.append(best[["sets", "ways", "policy", "threads", "hit_rate", "tokens_per_s"]].to_html(index=False, float_format="%.3f"))
        if analysis.chosen:
            c = analysis.chosen
            parts.append(f"<p class='note'>Chosen: {c.sets} sets × {c.ways} ways, {html.escape(c.policy)}, {c.threads} threads.</p>")
    if "time_breakdown" in figures:
        parts += ["<h2>Where the time went</h2>", _image(figures["time_breakdown"]["png"], "time breakdown")]
    if "layer_kinds" in figures:
        parts += [_image(figures["layer_kinds"]["png"], "decode layers by kind, measured against priced")]
    parts.append("</body></html>")
    return "\n".join(parts)
