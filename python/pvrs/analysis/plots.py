"""Plotly figures of the analyses: the per-layer persona figures (similarity heatmaps, PCA, the
assistant-axis projection) with their layer slider, and the helpers every figure shares
(`curves.py` has the across-layer figures, `export.py` writes HTML and PNG).

Figure builders take the result dataclasses of `pvrs.analysis.compute` / `pvrs.analysis.probes` and
persona display names; they never compute anything beyond what they draw."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pvrs.analysis.compute import (
    AxisResult,
    PCAResult,
    SimilarityResult,
    layer_position,
)
from pvrs.errors import RenderError

if TYPE_CHECKING:
    import plotly.graph_objects as go


_HEIGHT_PER_ROW = 18  # pixels per persona row in persona-indexed heatmaps/bars
# Past this many personas, names as heatmap/bar tick labels overlap into a smear: they are
# left off (hover still names every cell and bar) and the figure stops growing per persona.
LABELLED_PERSONAS_MAX = 80
_UNLABELLED_SIZE = 900  # pixels along a persona axis that carries no names
# PCA points carry their name as text up to this many personas (names on hover past it).
SCATTER_TEXT_MAX = 40
# The HTML similarity heatmaps slide through every layer only while personas^2 x layers
# (the size of one all-layer matrix, as `analyze.ALL_LAYER_SIMILARITY_MAX` measures it for
# the tables) is at most this. A value costs ~7.5 bytes of page (float32 in base64, its '/'
# escaped), so the two panels at the cap add ~9 MB to the page (e.g. 135 personas x 32
# layers); past it the focus layer alone is drawn, keeping the report quick to open and share.
SIMILARITY_SLIDER_MAX = 600_000
_SLIDER_MARGIN = 90  # pixels above the plot for the layer slider (below the title)

def plotly_go():  # plotly is an optional extra; import it only when drawing
    try:
        import plotly.graph_objects as go
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise RenderError("plots need plotly: pip install 'pvrs[plots]'") from None
    return go


def labelled(n_personas: int) -> bool:
    return n_personas <= LABELLED_PERSONAS_MAX


def size(n_rows: int, base: int = 420) -> int:
    """Pixels along a persona axis: a readable row per name while names are drawn, a
    fixed size past that (there is nothing per row to fit)."""
    if not labelled(n_rows):
        return _UNLABELLED_SIZE
    return max(base, 160 + _HEIGHT_PER_ROW * n_rows)


# ---- the layer slider ------------------------------------------------------------------

# Adds one layer's traces to the figure and returns that layer's layout changes, as
# plotly.js relayout paths ("title.text", "xaxis.title.text", ...).
LayerDraw = Callable[["go.Figure", int], dict[str, Any]]


def layer_slider(fig: go.Figure, layers: Sequence[int], focus: int, draw: LayerDraw) -> go.Figure:
    """Draw every layer of `layers` into `fig`, show the focus layer, and (with more than
    one layer) add a slider whose steps show one layer each: its traces visible, the
    others hidden, its layout changes applied. Traces already in `fig` stay visible on
    every step. All layers are in the page, so sliding needs no Python behind it."""
    shared = len(fig.data)
    spans: list[range] = []
    changes: list[dict[str, Any]] = []
    for layer in layers:
        start = len(fig.data)
        changes.append(draw(fig, layer))
        spans.append(range(start, len(fig.data)))

    def visible(k: int) -> list[bool]:
        return [i < shared or i in spans[k] for i in range(len(fig.data))]

    active = layer_position(layers, focus)
    for trace, shown in zip(fig.data, visible(active), strict=True):
        trace.visible = shown
    for path, value in changes[active].items():
        fig.layout[path] = value
    if len(layers) < 2:
        return fig
    steps = [
        {"method": "update", "label": str(layer), "args": [{"visible": visible(k)}, changes[k]]}
        for k, layer in enumerate(layers)
    ]
    fig.update_layout(
        sliders=[
            {
                "active": active,
                "steps": steps,
                "currentvalue": {"prefix": "layer "},
                # Above the plot, under the title: tall persona figures keep it in view,
                # and it never meets rotated tick labels or a legend below the plot.
                "x": 0,
                "len": 1,
                "y": 1,
                "yanchor": "bottom",
                "pad": {"b": 40, "t": 0},
            }
        ],
        margin_t=100 + _SLIDER_MARGIN,
        title={"yref": "container", "y": 1, "yanchor": "top", "pad": {"t": 20}},
    )
    return fig


def still(fig: go.Figure) -> go.Figure:
    """The figure as a static image shows it: the slider dropped (an image cannot slide)
    and the layer it starts on, the focus layer, drawn."""
    if not fig.layout.sliders:
        return fig
    go = plotly_go()
    static = go.Figure(fig)
    static.layout.sliders = ()  # assigned: update_layout(sliders=[]) leaves them in place
    static.layout.margin.t = None  # the room that was kept for the slider
    return static


# ---- figures ---------------------------------------------------------------------------


def similarity_slides(sim: SimilarityResult) -> bool:
    """Whether the similarity figure slides through every layer (else: the focus layer)."""
    return sim.raw.size <= SIMILARITY_SLIDER_MAX


def similarity_figure(sim: SimilarityResult, names: Sequence[str], layer: int) -> go.Figure:
    """Raw and centered cosine heatmaps with a layer slider starting at `layer` (only that
    layer past `SIMILARITY_SLIDER_MAX`). Rows follow the hierarchical order of `layer` on
    every step, so a persona keeps its row while sliding (and one clustering is computed,
    not one per layer)."""
    from plotly.subplots import make_subplots

    go = plotly_go()
    order = sim.at(layer)[2]
    labels = [names[i] for i in order]
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("raw cosine", "centered cosine"), horizontal_spacing=0.2
    )

    def draw(fig: go.Figure, at: int) -> dict[str, Any]:
        i = layer_position(sim.layers, at)
        raw = sim.raw[i][np.ix_(order, order)]
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
            (
                2,
                sim.centered[i][np.ix_(order, order)],
                {"zmin": -1.0, "zmax": 1.0, "colorscale": "RdBu_r"},
            ),
        )
        for col, mat, style in panels:
            fig.add_trace(
                go.Heatmap(
                    z=mat,
                    x=labels,
                    y=labels,
                    hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>",
                    **style,
                ),
                row=1,
                col=col,
            )
        return {"title.text": f"Persona similarity at layer {at}"}

    slides = similarity_slides(sim)
    side = size(len(labels), 520)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(showticklabels=labelled(len(labels)))
    fig.update_yaxes(showticklabels=labelled(len(labels)), row=1, col=1)
    fig.update_yaxes(showticklabels=False, row=1, col=2)  # same rows as the left panel
    fig.update_layout(width=2 * side + 160, height=side + 120)
    layer_slider(fig, sim.layers if slides else [layer], layer, draw)
    if not slides:
        fig.layout["title.subtitle.text"] = (
            f"focus layer only: {len(labels)}² personas × {len(sim.layers)} layers is past "
            f"the {SIMILARITY_SLIDER_MAX:,}-value cap of the layer slider"
        )
    return fig


def scree_figure(pca: PCAResult, layer: int) -> go.Figure:
    """Explained variance per component with a layer slider starting at `layer`, and
    PC1's share at every layer."""
    from plotly.subplots import make_subplots

    go = plotly_go()
    pcs = [f"PC{i + 1}" for i in range(pca.explained_ratio.shape[1])]
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(f"explained variance at layer {layer}", "PC1 share by layer"),
    )
    fig.add_trace(
        go.Scatter(x=pca.layers, y=pca.explained_ratio[:, 0], mode="lines+markers", name="PC1"),
        row=1,
        col=2,
    )

    def draw(fig: go.Figure, at: int) -> dict[str, Any]:
        ratios = pca.explained_ratio[layer_position(pca.layers, at)]
        fig.add_trace(go.Bar(x=pcs, y=ratios, name="per component"), row=1, col=1)
        fig.add_trace(go.Scatter(x=pcs, y=np.cumsum(ratios), name="cumulative"), row=1, col=1)
        return {"annotations[0].text": f"explained variance at layer {at}"}

    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    fig.update_xaxes(title_text="layer", row=1, col=2)
    finish(fig, "PCA of persona vectors (centered)", 1100, 500)
    return layer_slider(fig, pca.layers, layer, draw)


def pca_scatter_figure(
    pca: PCAResult,
    names: Sequence[str],
    layer: int,
    *,
    dims: int = 2,
    color: np.ndarray | None = None,
    color_label: str = "",
) -> go.Figure:
    """Personas on the first 2 or 3 principal components, with a layer slider starting at
    `layer` (see `persona_scatter`). `color`, `(P, L)` on `pca.layers`, colours each
    layer's points by a per-persona value."""
    k = pca.projections.shape[2]
    if dims not in (2, 3) or k < dims:
        raise RenderError(f"a {dims}-D PCA plot needs {dims} components, have {k}")

    def titles(i: int, at: int) -> tuple[str, list[str]]:
        ratio = pca.explained_ratio[i]
        pcs = [f"PC{j + 1} ({ratio[j]:.0%})" for j in range(dims)]
        return f"Personas on the principal components, layer {at}", pcs

    return persona_scatter(
        pca.projections[:, :, :dims],
        pca.layers,
        names,
        layer,
        titles,
        color=None if color is None else color.T,
        color_label=color_label,
    )


def numeric_marker(values: Sequence[Any], label: str) -> dict[str, Any]:
    """Marker settings that colour points by a number on a colour scale with its bar."""
    return {
        "color": values,
        "colorscale": "Viridis",
        "showscale": True,
        "colorbar": {"title": {"text": label}},
    }


def persona_scatter(
    coords: np.ndarray,
    layers: Sequence[int],
    names: Sequence[str],
    layer: int,
    titles: Callable[[int, int], tuple[str, list[str]]],
    *,
    color: np.ndarray | None = None,
    color_label: str = "",
) -> go.Figure:
    """Personas at `coords` `(L, P, 2 or 3)`, one trace per layer of `layers` (in that
    order) with a layer slider starting at `layer`; names on hover (and as labels up to
    `SCATTER_TEXT_MAX` personas). `titles(i, layer)` gives the figure title and the axis
    titles of layer `i`; `color` `(L, P)` colours each layer's points by a number."""
    go = plotly_go()
    dims = coords.shape[2]
    title_paths = (
        ["xaxis.title.text", "yaxis.title.text"]
        if dims == 2
        else [f"scene.{a}axis.title.text" for a in "xyz"]
    )
    common = {
        "mode": "markers+text" if len(names) <= SCATTER_TEXT_MAX else "markers",
        "text": list(names),
        "hovertemplate": "%{text}<extra></extra>",
    }

    def draw(fig: go.Figure, at: int) -> dict[str, Any]:
        i = layer_position(layers, at)
        proj = coords[i]
        marker: dict[str, Any] = {"size": 9 if dims == 2 else 5}
        if color is not None:
            marker |= numeric_marker(color[i], color_label)
        if dims == 2:
            fig.add_trace(
                go.Scatter(
                    x=proj[:, 0],
                    y=proj[:, 1],
                    textposition=_text_positions(proj[:, 0]),
                    marker=marker,
                    **common,
                )
            )
        else:
            fig.add_trace(
                go.Scatter3d(x=proj[:, 0], y=proj[:, 1], z=proj[:, 2], marker=marker, **common)
            )
        title, axes = titles(i, at)
        return {"title.text": title, **dict(zip(title_paths, axes, strict=True))}

    fig = finish(go.Figure(), "", 900, 700)
    fig.update_layout(showlegend=False)
    return layer_slider(fig, layers, layer, draw)


def _text_positions(x: np.ndarray) -> list[str]:
    """Labels of points near the left or right edge extend inwards, so they are not cut off
    by the plot area."""
    lo, hi = float(x.min()), float(x.max())
    third = (hi - lo) / 3
    return [
        "top right" if v < lo + third else "top left" if v > hi - third else "top center"
        for v in x.tolist()
    ]


def axis_projection_figure(axis: AxisResult, names: Sequence[str], layer: int) -> go.Figure:
    """Each persona's position on the assistant axis, sorted, with a layer slider
    starting at `layer`."""
    go = plotly_go()
    default_ids = set(axis.default_ids)
    defaults = {j for j, pid in enumerate(axis.persona_ids) if pid in default_ids}

    def draw(fig: go.Figure, at: int) -> dict[str, Any]:
        proj = axis.projections[:, layer_position(axis.layers, at)]
        order = np.argsort(proj)
        rows = [names[j] for j in order]
        fig.add_trace(
            go.Bar(
                x=proj[order],
                y=rows,
                orientation="h",
                marker_color=["#d62728" if j in defaults else "#1f77b4" for j in order],
                hovertemplate="%{y}: %{x:.3f}<extra></extra>",
            )
        )
        # Each layer sorts the personas its own way: the category axis follows the step.
        return {
            "title.text": f"Projection on the assistant axis, layer {at} "
            "(red: default personas; 0 = role mean)",
            "yaxis.categoryarray": rows,
        }

    fig = go.Figure()
    fig.update_layout(
        xaxis_title="(x - role mean) · axis",
        yaxis={"categoryorder": "array", "showticklabels": labelled(len(names))},
        width=900,
        height=size(len(names)),
        showlegend=False,
    )
    return layer_slider(fig, axis.layers, layer, draw)


def trace_color(i: int) -> str:
    from plotly.colors import qualitative

    return qualitative.Plotly[i % len(qualitative.Plotly)]


def finish(fig: go.Figure, title: str, width: int, height: int) -> go.Figure:
    """Common layout: title, size, legend below the plot so it never squeezes it."""
    fig.update_layout(
        title=title,
        width=width,
        height=height,
        legend={"orientation": "h", "yanchor": "top", "y": -0.18, "xanchor": "left", "x": 0},
        margin={"b": 120},
    )
    return fig
