"""The `pvrs eval` report: a CSV table of every cell, and an HTML page (plus PNGs) with
trait score against alpha per layer, coherence beside it, and the baselines as lines."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pvrs.judge.evaluation import CellResult

if TYPE_CHECKING:
    import plotly.graph_objects as go

COLUMNS = ("kind", "layer", "alpha", "strength", "trait", "coherence", "n")


def write_table(results: Sequence[CellResult], path: Path) -> Path:
    from pvrs.store import atomic_path

    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for r in results:
            c = r.cell
            writer.writerow([c.kind, _blank(c.layer), _blank(c.alpha), _blank(c.strength),
                             f"{r.trait:.2f}", f"{r.coherence:.2f}", len(r.answers)])
    return path


def _blank(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def figure(results: Sequence[CellResult], min_coherence: float) -> go.Figure:
    """Two panels sharing the alpha axis: trait (left) and coherence (right), one line per
    layer; the baselines are horizontal lines, the coherence threshold a dotted one."""
    from plotly.subplots import make_subplots

    from pvrs.analysis.plots import finish, plotly_go, trace_color

    go = plotly_go()
    fig = make_subplots(rows=1, cols=2, subplot_titles=("trait score", "coherence"), horizontal_spacing=0.08)
    steered = [r for r in results if r.cell.kind == "steered"]
    layers = sorted({r.cell.layer for r in steered if r.cell.layer is not None})
    for i, layer in enumerate(layers):
        cells = sorted((r for r in steered if r.cell.layer == layer), key=lambda r: r.cell.alpha or 0.0)
        alphas = [r.cell.alpha for r in cells]
        for col, values in ((1, [r.trait for r in cells]), (2, [r.coherence for r in cells])):
            fig.add_trace(go.Scatter(x=alphas, y=values, mode="lines+markers", name=f"layer {layer}",
                                     legendgroup=str(layer), showlegend=col == 1,
                                     line={"color": trace_color(i)}), row=1, col=col)
    for r in results:
        if r.cell.kind != "steered":
            for col, value in ((1, r.trait), (2, r.coherence)):
                fig.add_hline(y=value, line_dash="dash", annotation_text=r.cell.kind, row=1, col=col)
    fig.add_hline(y=min_coherence, line_dash="dot", line_color="grey", annotation_text="threshold", row=1, col=2)
    fig.update_xaxes(title_text="alpha")
    fig.update_yaxes(range=[0, 100])
    return finish(fig, "Trait and coherence against steering strength", 1100, 480)


def write_report(
    results: Sequence[CellResult], out_dir: Path, facts: Sequence[tuple[str, str]], min_coherence: float, png: bool
) -> list[Path]:
    """`report.html` (and `png/eval.png` with `png`) in `out_dir`; the paths written."""
    from pvrs.analysis.export import Section, write_html, write_pngs

    section = Section(
        "eval", "Trait and coherence by layer and alpha",
        "Mean judge scores (0-100) of the steered answers; dashed lines are the unsteered and "
        "prompted baselines, the dotted line the coherence threshold of the recommendation.",
        figure(results, min_coherence),
    )
    paths = [write_html([section], out_dir / "report.html", "pvrs eval", facts, [("table (CSV)", "results.csv")])]
    if png:
        paths += write_pngs([section], out_dir / "png")
    return paths
