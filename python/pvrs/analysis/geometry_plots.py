"""Figures of the geometry views (`pvrs.analysis.geometry`): Isomap/UMAP scatters, k-means
by layer, the dendrogram, each with the report's layer slider; and the colour-by menu that
recolours any persona scatter (PCA, Isomap, UMAP) by the assistant axis, the k-means
clusters or a persona attribute from the persona file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pvrs.analysis.compute import AxisResult, layer_position
from pvrs.analysis.geometry import NORMALISATIONS, KMeansResult
from pvrs.analysis.plots import (
    finish,
    labelled,
    layer_slider,
    numeric_marker,
    persona_scatter,
    plotly_go,
    size,
    trace_color,
)
from pvrs.errors import InputError

if TYPE_CHECKING:
    import plotly.graph_objects as go

EMBEDDING_LABELS = {"isomap": "Isomap", "umap": "UMAP"}
_MISSING = "#bbbbbb"  # a persona without the attribute (the baseline, usually)
_LEGEND_MAX = 24  # categories listed in a legend; the rest are counted
_MENU_MARGIN = 200  # pixels right of the plot for the menu, its legend or colour bar


# ---- colourings ------------------------------------------------------------------------


@dataclass(frozen=True)
class Colouring:
    """One entry of the colour-by menu: a value per persona, either per layer (one list
    per layer, in the figure's layer order) or one list for every layer; None where a
    persona has no value. Numbers are drawn on a colour scale, anything else as
    categories with a palette and a legend."""

    name: str
    values: list[list[Any]]
    numeric: bool

    @property
    def categories(self) -> list[str]:
        return sorted({str(v) for row in self.values for v in row if v is not None})


def attribute_colourings(
    persona_ids: Sequence[str], attributes: Mapping[str, Mapping[str, Any]] | None
) -> list[Colouring]:
    """One colouring per scalar attribute of the persona file that an analysed persona
    has; numeric exactly when the probes would treat it as a regression target."""
    from pvrs.analysis.probes import attribute_names, probe_labels

    out: list[Colouring] = []
    for name in attribute_names(attributes or {}):
        try:
            rows, labels, task = probe_labels(persona_ids, attributes or {}, name)
        except InputError:  # only personas that were not analysed have it
            continue
        values: list[Any] = [None] * len(persona_ids)
        for row, value in zip(rows, labels.tolist(), strict=True):
            values[row] = value
        out.append(Colouring(name, [values], task == "regression"))
    return out


def cluster_colouring(kmeans: KMeansResult) -> Colouring:
    return Colouring(
        "k-means cluster", [[f"cluster {c}" for c in row] for row in kmeans.labels.tolist()], False
    )


def axis_colouring(axis: AxisResult) -> Colouring:
    return Colouring("assistant axis", axis.projections.T.tolist(), True)


def _flat(prefix: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Nested settings as the dotted paths plotly.js restyles by."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            out |= _flat(f"{prefix}{key}.", value)
        else:
            out[prefix + key] = value
    return out


def _restyle(c: Colouring) -> tuple[dict[str, Any], str]:
    """The trace changes that show colouring `c`, and its legend's text ("" for numbers:
    the colour bar says it). A per-trace list shorter than the traces wraps around in
    plotly.js restyle, so a colouring that is the same on every layer is sent once."""
    if c.numeric:
        style = _flat("marker.", numeric_marker(c.values, c.name))
        style |= {
            "marker.colorbar.len": 0.7,
            "marker.colorbar.y": 0,
            "marker.colorbar.yanchor": "bottom",
        }
        legend = ""
    else:
        palette = {cat: trace_color(i) for i, cat in enumerate(c.categories)}
        colours = [[_MISSING if v is None else palette[str(v)] for v in row] for row in c.values]
        style = {"marker.color": colours, "marker.showscale": False}
        entries = [f'<span style="color:{palette[cat]}">●</span> {cat}' for cat in c.categories]
        if len(entries) > _LEGEND_MAX:
            entries = [*entries[:_LEGEND_MAX], f"+{len(entries) - _LEGEND_MAX} more"]
        legend = "<br>".join([f"<b>{c.name}</b>", *entries])
    hover = [[f"{c.name}: {'—' if v is None else _shown(v)}" for v in row] for row in c.values]
    style |= {"customdata": hover, "hovertemplate": "%{text}<br>%{customdata}<extra></extra>"}
    return style, legend


def _shown(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _legend(text: str) -> list[dict[str, Any]]:
    if not text:
        return []
    return [
        {
            "text": text,
            "xref": "paper",
            "yref": "paper",
            "x": 1.02,
            "y": 0.9,
            "xanchor": "left",
            "yanchor": "top",
            "align": "left",
            "showarrow": False,
        }
    ]


def colour_menu(fig: go.Figure, colourings: Sequence[Colouring]) -> go.Figure:
    """Colour a persona scatter (one trace per layer, as `persona_scatter` draws) by the
    first of `colourings`, with a dropdown to switch to the others. Only trace styles
    change, so the layer slider keeps working whichever colouring is shown."""
    if not colourings:
        return fig
    changes = [_restyle(c) for c in colourings]
    style, legend = changes[0]
    for i, trace in enumerate(fig.data):
        for path, value in style.items():
            trace[path] = value[i % len(value)] if isinstance(value, list) else value
    fig.update_layout(annotations=_legend(legend), margin_r=_MENU_MARGIN)
    if len(colourings) > 1:
        buttons = [
            {"label": c.name, "method": "update", "args": [s, {"annotations": _legend(text)}]}
            for c, (s, text) in zip(colourings, changes, strict=True)
        ]
        fig.update_layout(
            updatemenus=[
                {
                    "type": "dropdown",
                    "buttons": buttons,
                    "active": 0,
                    "x": 1.02,
                    "y": 1,
                    "xanchor": "left",
                    "yanchor": "top",
                }
            ]
        )
    return fig


# ---- figures ---------------------------------------------------------------------------


def embedding_figure(
    coords: np.ndarray, layers: Sequence[int], names: Sequence[str], layer: int, method: str
) -> go.Figure:
    """Personas on a 2-D Isomap or UMAP embedding `(L, P, 2)`, with the layer slider."""
    label = EMBEDDING_LABELS[method]

    def titles(_i: int, at: int) -> tuple[str, list[str]]:
        return f"Personas by {label}, layer {at}", [f"{label} 1", f"{label} 2"]

    return persona_scatter(coords, layers, names, layer, titles)


def kmeans_figure(kmeans: KMeansResult) -> go.Figure:
    """The silhouette-chosen k and its silhouette at every layer."""
    from plotly.subplots import make_subplots

    go = plotly_go()
    fig = make_subplots(rows=1, cols=2, subplot_titles=("chosen k", "silhouette at the chosen k"))
    fig.add_trace(go.Scatter(x=kmeans.layers, y=kmeans.k, mode="lines+markers", name="k"), 1, 1)
    fig.add_trace(
        go.Scatter(x=kmeans.layers, y=kmeans.silhouette, mode="lines+markers", name="silhouette"),
        1,
        2,
    )
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(dtick=1, row=1, col=1)
    fig.update_yaxes(range=[-1, 1], row=1, col=2)
    return finish(fig, "k-means by layer (k with the best silhouette)", 1100, 450)


def dendrogram_figure(
    trees: np.ndarray, layers: Sequence[int], names: Sequence[str], layer: int, normalize: str
) -> go.Figure:
    """The average-linkage tree of every layer `(L, P - 1, 4)`, leaves down the side,
    with the layer slider; branches below 0.7 of the top merge coloured by cluster."""
    from scipy.cluster.hierarchy import dendrogram

    go = plotly_go()
    centred = NORMALISATIONS[normalize][0]

    def draw(fig: go.Figure, at: int) -> dict[str, Any]:
        d = dendrogram(trees[layer_position(layers, at)], no_plot=True, above_threshold_color="top")
        links: dict[str, tuple[list[float | None], list[float | None]]] = {}
        for xs, ys, colour in zip(d["dcoord"], d["icoord"], d["color_list"], strict=True):
            x, y = links.setdefault(colour, ([], []))
            x += [*xs, None]
            y += [*ys, None]
        for colour, (x, y) in links.items():
            shade = "#888888" if colour == "top" else trace_color(int(colour.lstrip("C")))
            fig.add_trace(
                go.Scatter(x=x, y=y, mode="lines", line={"color": shade}, hoverinfo="skip")
            )
        leaves = [names[j] for j in d["leaves"]]
        ticks = [5 + 10 * j for j in range(len(leaves))]
        fig.add_trace(
            go.Scatter(
                x=[0.0] * len(leaves),
                y=ticks,
                text=leaves,
                mode="markers",
                marker={"size": 4, "color": "#444444"},
                hovertemplate="%{text}<extra></extra>",
            )
        )
        top = max(max(xs) for xs in d["dcoord"])
        return {
            "title.text": f"Hierarchical clustering of personas, layer {at}",
            # The top merge clear of the edge (identical vectors: nothing to scale).
            "xaxis.range": [-0.02 * top, 1.03 * top] if top > 0 else None,
            "yaxis.tickvals": ticks,
            "yaxis.ticktext": leaves,
        }

    fig = go.Figure()
    fig.update_layout(
        xaxis_title=f"cosine distance{' (centred vectors)' if centred else ''}",
        yaxis={"showticklabels": labelled(len(names)), "showgrid": False, "zeroline": False},
        width=900,
        height=size(len(names)),
        showlegend=False,
    )
    return layer_slider(fig, layers, layer, draw)
