"""The `pvrs eval` report: a CSV table of every cell, and an HTML page (plus PNGs) with
trait score against alpha per layer (and against tau per cap), coherence beside it, and the
baselines as lines. Means are over the scored answers; the table counts the unscored ones."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvrs.judge.evaluation import CAP_KINDS, CellResult

if TYPE_CHECKING:
    import plotly.graph_objects as go

# `n` answers per cell; `*_unscored` of them got no score (REFUSAL or no number) and are
# left out of the `trait` / `coherence` means (blank when no answer was scored). A band cell has
# no `layer` but a `band` (`10+11+12`) and `band_strengths`, the alphas added there (space-separated).
COLUMNS = ("kind", "layer", "alpha", "strength", "trait", "coherence", "n", "cap", "tau", "trait_unscored", "coherence_unscored",
           "band", "band_strengths")


def write_table(results: Sequence[CellResult], path: Path) -> Path:
    from pvrs.store import atomic_path

    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for r in results:
            c = r.cell
            writer.writerow([c.kind, _blank(c.layer), _blank(c.alpha), _blank(c.strength), _mean(r.trait),
                             _mean(r.coherence), len(r.answers), c.cap or "", _blank(c.tau), *r.unscored,
                             c.band or "", " ".join(f"{s:g}" for s in c.strengths or ())])
    return path


def _blank(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _mean(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.2f}"


def figure(results: Sequence[CellResult], min_coherence: float) -> go.Figure:
    """Two panels: trait (left) and coherence (right), one line per layer or band against alpha; a
    second row, one line per cap against tau, when the grid has caps. The baselines are
    horizontal lines, the coherence threshold a dotted one."""
    from plotly.subplots import make_subplots

    from pvrs.analysis.plots import finish, plotly_go

    go = plotly_go()
    steered = [r for r in results if r.cell.kind == "steered"]
    capped = [r for r in results if r.cell.kind in CAP_KINDS]
    rows = [(x, cells) for x, cells in (("alpha", steered), ("tau", capped)) if cells] or [("alpha", [])]
    titles = [f"{name} vs {x}" for x, _ in rows for name in ("trait score", "coherence")]
    fig = make_subplots(rows=len(rows), cols=2, subplot_titles=titles, horizontal_spacing=0.08, vertical_spacing=0.15)
    for row, (x, cells) in enumerate(rows, 1):
        _lines(go, fig, cells, x, row)
        for r in results:
            if r.cell.kind in ("unsteered", "prompted"):
                for col, value in ((1, r.trait), (2, r.coherence)):
                    if not math.isnan(value):  # no answer scored: no line
                        fig.add_hline(y=value, line_dash="dash", annotation_text=r.cell.kind, row=row, col=col)
        fig.add_hline(y=min_coherence, line_dash="dot", line_color="grey", annotation_text="threshold", row=row, col=2)
        fig.update_xaxes(title_text=x, row=row)
    fig.update_yaxes(range=[0, 100])
    title = "Trait and coherence against steering strength" + (" and cap threshold" if capped else "")
    return finish(fig, title, 1100, 480 * len(rows))


def _lines(go: Any, fig: go.Figure, cells: Sequence[CellResult], x: str, row: int) -> None:
    """One line per layer or band (x = alpha) or per cap (x = tau), in both panels of `row`."""
    from pvrs.analysis.plots import trace_color

    def group(r: CellResult) -> str:
        return r.cell.where if x == "alpha" else f"{r.cell.kind} {r.cell.cap}"

    names = list(dict.fromkeys(group(r) for r in cells))
    for i, name in enumerate(names):
        line = sorted((r for r in cells if group(r) == name), key=lambda r: getattr(r.cell, x) or 0.0)
        xs = [getattr(r.cell, x) for r in line]
        for col, values in ((1, [r.trait for r in line]), (2, [r.coherence for r in line])):
            fig.add_trace(go.Scatter(x=xs, y=values, mode="lines+markers", name=name, legendgroup=name,
                                     showlegend=col == 1, line={"color": trace_color(i)}), row=row, col=col)


def write_report(
    results: Sequence[CellResult], out_dir: Path, facts: Sequence[tuple[str, str]], min_coherence: float, png: bool
) -> list[Path]:
    """`report.html` (and `png/eval.png` with `png`) in `out_dir`; the paths written."""
    from pvrs.analysis.export import Section, write_html, write_pngs

    section = Section(
        "eval", "Trait and coherence by layer and alpha",
        "Mean judge scores (0-100) of the steered (and capped) answers; dashed lines are the unsteered and "
        "prompted baselines, the dotted line the coherence threshold of the recommendation.",
        figure(results, min_coherence),
    )
    paths = [write_html([section], out_dir / "report.html", "pvrs eval", facts, [("table (CSV)", "results.csv")])]
    if png:
        paths += write_pngs([section], out_dir / "png")
    return paths
