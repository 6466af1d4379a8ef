"""Plotly figures of the analyses, and their export: one self-contained HTML report
(plotly.js inlined, so it opens offline) and one PNG per figure (kaleido + a headless
Chrome/Chromium).

Figure builders take the result dataclasses of `pvrs.analysis` / `pvrs.probes` and
persona display names; they never compute anything beyond what they draw."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pvrs.analysis import (
    AgreementResult,
    AxisResult,
    LayerCurves,
    PCAResult,
    SimilarityResult,
    layer_position,
)
from pvrs.errors import RenderError

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from pvrs.probes import ProbeCurve

PNG_SCALE = 2
_HEIGHT_PER_ROW = 18  # pixels per persona row in persona-indexed heatmaps/bars


@dataclass(frozen=True)
class Section:
    """One figure of the report: `slug` names its PNG, `caption` says how to read it."""

    slug: str
    title: str
    caption: str
    figure: go.Figure


def _go():  # plotly is an optional extra; import it only when drawing
    try:
        import plotly.graph_objects as go
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise RenderError("plots need plotly: pip install 'pvrs[plots]'") from None
    return go


def _size(n_rows: int, base: int = 420) -> int:
    return int(min(max(base, 160 + _HEIGHT_PER_ROW * n_rows), 2400))


# ---- figures ---------------------------------------------------------------------------


def similarity_figure(sim: SimilarityResult, names: Sequence[str], layer: int) -> go.Figure:
    """Raw and centered cosine heatmaps at one layer, rows in hierarchical order."""
    from plotly.subplots import make_subplots

    go = _go()
    raw, centered, order = sim.at(layer)
    labels = [names[i] for i in order]
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("raw cosine", "centered cosine"), horizontal_spacing=0.2
    )
    # Raw cosines of residual streams crowd near 1: give them their own colour range so
    # their structure shows; centered ones use the full symmetric [-1, 1].
    off_diagonal = raw[~np.eye(len(raw), dtype=bool)]
    raw_min = float(off_diagonal.min()) if off_diagonal.size else -1.0
    panels = (
        (
            1,
            raw,
            {
                "zmin": raw_min,
                "zmax": 1.0,
                "colorscale": "Viridis",
                "colorbar": {"x": 0.41, "thickness": 15},
            },
        ),
        (2, centered, {"zmin": -1.0, "zmax": 1.0, "colorscale": "RdBu_r"}),
    )
    for col, mat, style in panels:
        fig.add_trace(
            go.Heatmap(
                z=mat[np.ix_(order, order)],
                x=labels,
                y=labels,
                hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>",
                **style,
            ),
            row=1,
            col=col,
        )
    side = _size(len(labels), 520)
    fig.update_yaxes(autorange="reversed")
    fig.update_yaxes(showticklabels=False, row=1, col=2)  # same rows as the left panel
    fig.update_layout(
        title=f"Persona similarity at layer {layer}", width=2 * side + 160, height=side + 120
    )
    return fig


def scree_figure(pca: PCAResult, layer: int) -> go.Figure:
    """Explained variance per component at one layer, and PC1's share at every layer."""
    from plotly.subplots import make_subplots

    go = _go()
    ratios = pca.explained_ratio[layer_position(pca.layers, layer)]
    pcs = [f"PC{i + 1}" for i in range(len(ratios))]
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(f"explained variance at layer {layer}", "PC1 share by layer"),
    )
    fig.add_trace(go.Bar(x=pcs, y=ratios, name="per component"), row=1, col=1)
    fig.add_trace(go.Scatter(x=pcs, y=np.cumsum(ratios), name="cumulative"), row=1, col=1)
    fig.add_trace(
        go.Scatter(x=pca.layers, y=pca.explained_ratio[:, 0], mode="lines+markers", name="PC1"),
        row=1,
        col=2,
    )
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    fig.update_xaxes(title_text="layer", row=1, col=2)
    return _finish(fig, "PCA of persona vectors (centered)", 1100, 500)


def pca_scatter_figure(
    pca: PCAResult,
    names: Sequence[str],
    layer: int,
    *,
    dims: int = 2,
    color: np.ndarray | None = None,
    color_label: str = "",
) -> go.Figure:
    """Personas on the first 2 or 3 principal components at one layer, names on hover
    (and as labels when there are few), optionally coloured by a per-persona value."""
    go = _go()
    i = layer_position(pca.layers, layer)
    proj = pca.projections[i]
    k = proj.shape[1]
    if dims not in (2, 3) or k < dims:
        raise RenderError(f"a {dims}-D PCA plot needs {dims} components, have {k}")
    ratio = pca.explained_ratio[i]
    mode = "markers+text" if len(names) <= 40 else "markers"
    marker: dict = {"size": 9 if dims == 2 else 5}
    if color is not None:
        marker |= {"color": color, "colorscale": "Viridis", "showscale": True}
        marker["colorbar"] = {"title": color_label}
    axis_titles = [f"PC{j + 1} ({ratio[j]:.0%})" for j in range(dims)]
    common = {
        "mode": mode,
        "text": list(names),
        "marker": marker,
        "hovertemplate": "%{text}<extra></extra>",
    }
    if dims == 2:
        fig = go.Figure(go.Scatter(x=proj[:, 0], y=proj[:, 1], textposition="top center", **common))
        fig.update_layout(xaxis_title=axis_titles[0], yaxis_title=axis_titles[1])
    else:
        fig = go.Figure(go.Scatter3d(x=proj[:, 0], y=proj[:, 1], z=proj[:, 2], **common))
        fig.update_layout(
            scene={
                "xaxis_title": axis_titles[0],
                "yaxis_title": axis_titles[1],
                "zaxis_title": axis_titles[2],
            }
        )
    return _finish(fig, f"Personas on the principal components, layer {layer}", 900, 700)


def axis_projection_figure(axis: AxisResult, names: Sequence[str], layer: int) -> go.Figure:
    """Each persona's position on the assistant axis at one layer, sorted."""
    go = _go()
    proj = axis.projections[:, layer_position(axis.layers, layer)]
    order = np.argsort(proj)
    defaults = set(axis.default_ids)
    colors = ["#d62728" if axis.persona_ids[j] in defaults else "#1f77b4" for j in order]
    fig = go.Figure(
        go.Bar(
            x=proj[order],
            y=[names[j] for j in order],
            orientation="h",
            marker_color=colors,
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"Projection on the assistant axis, layer {layer} (red: default personas; 0 = role mean)",
        xaxis_title="(x - role mean) · axis",
        width=900,
        height=_size(len(order)),
    )
    return fig


def axis_layers_figure(axis: AxisResult) -> go.Figure:
    """The axis's length and its alignment with PC1 by layer."""
    from plotly.subplots import make_subplots

    go = _go()
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("axis norm (default - role mean)", "|cos(axis, PC1)|")
    )
    fig.add_trace(
        go.Scatter(x=axis.layers, y=axis.norm, mode="lines+markers", name="norm"), row=1, col=1
    )
    if axis.cos_pc1 is not None:
        fig.add_trace(
            go.Scatter(x=axis.layers, y=axis.cos_pc1, mode="lines+markers", name="|cos|"),
            row=1,
            col=2,
        )
        fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_xaxes(title_text="layer")
    fig.update_layout(showlegend=False)
    return _finish(fig, "The assistant axis by layer", 1100, 450)


def layer_curves_figure(curves: LayerCurves) -> go.Figure:
    """Vector norm (mean ± std over personas) and between-persona spread by layer."""
    from plotly.subplots import make_subplots

    go = _go()
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("vector norm", "between-persona spread / mean norm")
    )
    fig.add_trace(
        go.Scatter(
            x=curves.layers,
            y=curves.norm_mean,
            error_y={"type": "data", "array": curves.norm_std},
            mode="lines+markers",
            name="norm",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=curves.layers, y=curves.spread, mode="lines", name="spread", line={"dash": "dot"}
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=curves.layers, y=curves.relative_spread, mode="lines+markers", name="relative spread"
        ),
        row=1,
        col=2,
    )
    fig.update_xaxes(title_text="layer")
    return _finish(fig, "Layer curves", 1100, 500)


def agreement_figure(results: Sequence[AgreementResult], title: str) -> go.Figure:
    """Cosine between two versions of each persona's vector by layer, raw (left) and
    centered (right): line, the mean over personas; band, min to max. One colour per pair."""
    from plotly.subplots import make_subplots

    go = _go()
    fig = make_subplots(rows=1, cols=2, subplot_titles=("raw cosine", "centered cosine"))
    pairs = list(dict.fromkeys((r.label_a, r.label_b) for r in results))
    for res in results:
        pair = (res.label_a, res.label_b)
        color = _color(pairs.index(pair))
        col = 2 if res.centered else 1
        lo, hi = res.cosine.min(axis=0), res.cosine.max(axis=0)
        fig.add_trace(
            go.Scatter(
                x=[*res.layers, *res.layers[::-1]],
                y=[*hi, *lo[::-1]],
                mode="lines",
                fill="toself",
                fillcolor=color,
                opacity=0.2,
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
            ),
            row=1,
            col=col,
        )
        fig.add_trace(
            go.Scatter(
                x=res.layers,
                y=res.mean_by_layer,
                mode="lines+markers",
                line={"color": color},
                name=f"{pair[0]} vs {pair[1]}",
                legendgroup=str(pair),
                showlegend=not res.centered,
            ),
            row=1,
            col=col,
        )
    fig.update_xaxes(title_text="layer")
    return _finish(fig, title, 1100, 480)


def probe_figure(curves: Sequence[ProbeCurve]) -> go.Figure:
    """Cross-validated probe score by layer, one line per attribute and method; dotted:
    chance (majority class) of each categorical attribute."""
    go = _go()
    fig = go.Figure()
    chance_drawn: set[str] = set()
    for i, c in enumerate(curves):
        fig.add_trace(
            go.Scatter(
                x=c.layers,
                y=c.scores,
                mode="lines+markers",
                line={"color": _color(i)},
                name=f"{c.attribute} / {c.method} ({c.primary})",
            )
        )
        if c.task == "classification" and c.attribute not in chance_drawn:
            chance_drawn.add(c.attribute)
            fig.add_trace(
                go.Scatter(
                    x=c.layers,
                    y=[m["chance"] for m in c.metrics],
                    mode="lines",
                    line={"dash": "dot", "color": "grey"},
                    name=f"{c.attribute}: chance",
                )
            )
    fig.update_layout(xaxis_title="layer", yaxis_title="score")
    return _finish(fig, "Linear probes: cross-validated score by layer", 1000, 500)


def _color(i: int) -> str:
    from plotly.colors import qualitative

    return qualitative.Plotly[i % len(qualitative.Plotly)]


def _finish(fig: go.Figure, title: str, width: int, height: int) -> go.Figure:
    """Common layout: title, size, legend below the plot so it never squeezes it."""
    fig.update_layout(
        title=title,
        width=width,
        height=height,
        legend={"orientation": "h", "yanchor": "top", "y": -0.18, "xanchor": "left", "x": 0},
        margin={"b": 120},
    )
    return fig


# ---- export ----------------------------------------------------------------------------


def png_browser() -> str | None:
    """The Chrome/Chromium kaleido would use for PNG export (its own finder), or None."""
    try:
        from choreographer.browsers.chromium import Chromium

        return Chromium.find_browser(skip_local=False)
    except (ImportError, RuntimeError, OSError):
        return None


def write_pngs(sections: Sequence[Section], directory: Path) -> list[Path]:
    """One PNG per section, rendered by kaleido in one headless browser session."""
    import plotly.io as pio

    paths = [directory / f"{s.slug}.png" for s in sections]
    if not sections:
        return paths
    if png_browser() is None:
        raise RenderError(
            "PNG export needs Chrome or Chromium for kaleido: `apt-get install chromium` "
            "(or `plotly_get_chrome`), or pass --no-png for the HTML report only"
        )
    directory.mkdir(parents=True, exist_ok=True)
    try:
        pio.write_images([s.figure for s in sections], paths, scale=PNG_SCALE)
    except Exception as exc:  # kaleido raises plain exceptions from the browser side
        raise RenderError(f"PNG export to {directory} failed: {exc}") from exc
    return paths


def write_html(
    sections: Sequence[Section],
    path: Path,
    title: str,
    facts: Sequence[tuple[str, str]],
    links: Sequence[tuple[str, str]] = (),
) -> Path:
    """A single offline HTML page: a facts table, links, then each figure with its caption."""
    from plotly.offline import get_plotlyjs

    esc = html.escape
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts)
    toc = "".join(f'<li><a href="#{s.slug}">{esc(s.title)}</a></li>' for s in sections)
    link_items = "".join(f'<li><a href="{esc(href)}">{esc(text)}</a></li>' for text, href in links)
    body = "".join(
        f'<section id="{s.slug}"><h2>{esc(s.title)}</h2><p>{esc(s.caption)}</p>'
        + s.figure.to_html(full_html=False, include_plotlyjs=False)
        + "</section>"
        for s in sections
    )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:1300px;margin:auto;padding:1em}"
        "th{text-align:left;padding-right:1em}section{margin-top:2em}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        f"<h1>{esc(title)}</h1><table>{rows}</table>"
        f"<h3>Figures</h3><ul>{toc}</ul>"
        + (f"<h3>Tables</h3><ul>{link_items}</ul>" if link_items else "")
        + body
        + "</body></html>"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
